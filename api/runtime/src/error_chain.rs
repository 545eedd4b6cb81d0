//! An error and its causes on one line. HTTP clients (reqwest, hyper) keep
//! the cause an operator needs (connection refused, timed out, certificate
//! not trusted) in the source chain, behind a bare "error sending request".

/// `error: cause: cause's cause`, each cause once (some errors repeat their
/// source's text in their own).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{error::Error, fmt};

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn every_cause_once_on_one_line() {
        let refused = Layer("connection refused", None);
        let connect = Layer(
            "tcp connect error: connection refused",
            Some(Box::new(refused)),
        );
        let send = Layer("error sending request", Some(Box::new(connect)));
        assert_eq!(
            super::describe(&send),
            "error sending request: tcp connect error: connection refused"
        );
        assert_eq!(super::describe(&Layer("alone", None)), "alone");
    }
}
