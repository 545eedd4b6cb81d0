//! Just enough DER to read a certificate's serial number, for logs and
//! tests ("which certificate is being served?") without an X.509 parser.

/// The serial number of a DER-encoded X.509 certificate, as lower-case hex
/// without leading zero bytes; `None` if the bytes are not a certificate.
pub fn certificate_serial_hex(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber INTEGER, ... }, ... }
    let (tag, cert, _) = read_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = read_tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (mut tag, mut value, mut rest) = read_tlv(tbs)?;
    if tag == 0xa0 {
        (tag, value, rest) = read_tlv(rest)?;
    }
    let _ = rest;
    if tag != 0x02 || value.is_empty() {
        return None;
    }
    let trimmed: &[u8] = match value.iter().position(|b| *b != 0) {
        Some(first) => &value[first..],
        None => &value[value.len() - 1..],
    };
    Some(trimmed.iter().map(|b| format!("{b:02x}")).collect())
}

/// Splits one DER TLV off the front: (tag, value, rest).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if input.len() < len {
        return None;
    }
    let (value, rest) = input.split_at(len);
    Some((tag, value, rest))
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
    fn reads_a_short_serial() {
        // SEQ { SEQ { [0] { INT 2 }, INT 0x00 0x85 } }
        let der = [
            0x30, 0x0b, 0x30, 0x09, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x02, 0x00, 0x85,
        ];
        assert_eq!(certificate_serial_hex(&der).as_deref(), Some("85"));
    }
}
