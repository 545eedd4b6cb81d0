//! What the logs and tests say about a certificate ("which one is being
//! served?"), read with `x509-parser` rather than by hand.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The serial number of a DER-encoded X.509 certificate, as lower-case hex
/// without leading zero bytes; `None` if the bytes are not a certificate.
pub fn certificate_serial_hex(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let raw = cert.tbs_certificate.raw_serial();
    // DER keeps a leading zero byte when the top bit is set (so the INTEGER
    // stays positive); the serial a person compares is the number itself.
    let trimmed = match raw.iter().position(|b| *b != 0) {
        Some(first) => &raw[first..],
        None => raw.get(raw.len().saturating_sub(1)..)?,
    };
    if trimmed.is_empty() {
        return None;
    }
    Some(trimmed.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_has_no_serial() {
        assert_eq!(certificate_serial_hex(b""), None);
        assert_eq!(certificate_serial_hex(b"\x30\x82\xff\xff"), None);
        assert_eq!(certificate_serial_hex(b"not a certificate"), None);
    }

    #[test]
    fn reads_the_serial_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["example".to_string()])
            .expect("valid subject alt names");
        // Top bit set: DER prepends a zero byte the hex must not show.
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x85, 0x01]));
        let key = rcgen::KeyPair::generate().expect("key generation");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        assert_eq!(certificate_serial_hex(cert.der()).as_deref(), Some("8501"));
    }
}
