//! The one reader of the Prometheus text exposition format in the project.
//!
//! [`parse`] is strict, for tests that check a `/metrics` page is something
//! Prometheus will ingest: valid metric and label names, quoted and escaped
//! label values, numeric values, one `# TYPE` per family declared before
//! its samples, and no duplicate series. [`samples`] reads the same sample
//! grammar line by line and passes over what it cannot read, for tools that
//! only want some series of a page they do not own (the demo's exporter
//! scrapes, the scale benchmark's API server metrics).

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exposition {
    /// Family name -> declared type.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Samples of a metric whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

/// Parses `text`, failing with the line number and reason on the first
/// defect.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen = BTreeSet::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_metric_name(name) {
                        return Err(fail("bad metric name in TYPE"));
                    }
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ]
                    .contains(&kind)
                    {
                        return Err(fail("unknown type"));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(fail("second TYPE for a family"));
                    }
                }
                (Some("HELP"), Some(name), _) if !is_metric_name(name) => {
                    return Err(fail("bad metric name in HELP"));
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(&fail)?;
        if family(&sample.name, &out.types).is_none() {
            return Err(fail("sample without a TYPE line before it"));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !seen.insert(key) {
            return Err(fail("duplicate series"));
        }
        out.samples.push(sample);
    }
    Ok(out)
}

/// The sample lines of `text` that parse, in order; comments, blank and
/// malformed lines are passed over.
pub fn samples(text: &str) -> impl Iterator<Item = Sample> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| parse_sample(line).ok())
}

/// The declared family a sample belongs to (OpenMetrics suffixes allowed).
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_total", "_created", "_bucket", "_count", "_sum", "_info"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|base| types.contains_key(*base))
        })
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            // Label name up to '=', or the closing brace.
            let start = match chars.peek() {
                Some((_, '}')) => {
                    let (i, _) = chars.next().ok_or("unterminated labels")?;
                    rest = &body[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated labels"),
            };
            let eq = body[start..].find('=').ok_or("label without '='")? + start;
            let label = &body[start..eq];
            if !is_label_name(label) {
                return Err("bad label name");
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        _ => return Err("bad escape"),
                    },
                    '\n' => return Err("newline in label value"),
                    c => value.push(c),
                }
            }
            if labels.insert(label.to_string(), value).is_some() {
                return Err("repeated label");
            }
            match chars.peek() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected ',' or '}' after a label"),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| "value is not a number")?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<f64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing text");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_text() {
        let text = "# HELP a_b Something.\n# TYPE a_b gauge\na_b{x=\"1\",y=\"q\\\"z\"} 2.5\na_b 3\n# TYPE c counter\nc_total 1 1700000000\n";
        let parsed = parse(text).expect("valid");
        assert_eq!(parsed.samples.len(), 3);
        assert_eq!(parsed.samples[0].labels["y"], "q\"z");
        assert_eq!(parsed.find("c_total", &[])[0].value, 1.0);
    }

    #[test]
    fn samples_pass_over_what_they_cannot_read() {
        let text = "# TYPE m gauge\nm{a=\"x,y\",b=\"q\\\"uote\"} 2\nbroken{ 1\n\nn 3\n";
        let read: Vec<Sample> = samples(text).collect();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].labels["a"], "x,y");
        assert_eq!(read[0].labels["b"], "q\"uote");
        assert_eq!((read[1].name.as_str(), read[1].value), ("n", 3.0));
    }

    #[test]
    fn rejects_defects() {
        for bad in [
            "a 1\n",                            // no TYPE
            "# TYPE a gauge\na{x=1} 1\n",       // unquoted
            "# TYPE a gauge\na{x=\"1\"} one\n", // not a number
            "# TYPE a gauge\na{1x=\"1\"} 1\n",  // bad label name
            "# TYPE a gauge\na 1\na 2\n",       // duplicate
            "# TYPE a gauge\n# TYPE a gauge\n", // two TYPEs
            "# TYPE a gauge\na{x=\"1\" 1\n",    // unterminated
            "# TYPE 9a gauge\n",                // bad name
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
