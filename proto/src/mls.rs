//! The MLS conventions natterd and every client share (spec/protocol.md,
//! sections 5.28 and 5.29): natterd checks exactly what the SDK makes.

/// The one ciphersuite natter speaks: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
/// (RFC 9420 section 17.1).
pub const CIPHERSUITE: u16 = 0x0001;

/// What a device signs to prove it holds the key it registers.
pub const DEVICE_KEY_LABEL: &[u8] = b"natter-device-key-v1";

/// What a device signs (Ed25519) to register its key: the label, then the
/// user id's and the device id's 16 bytes (RFC 4122 byte order).
pub fn device_key_proof_message(user_id: &[u8; 16], device_id: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DEVICE_KEY_LABEL.len() + 32);
    m.extend_from_slice(DEVICE_KEY_LABEL);
    m.extend_from_slice(user_id);
    m.extend_from_slice(device_id);
    m
}

/// The BasicCredential identity of a device: `"<user_id>/<device_id>"`, both
/// ids in their hyphenated lower-case form.
pub fn credential_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}/{device_id}")
}

/// The `(user_id, device_id)` a BasicCredential identity names, unparsed;
/// `None` when it is not UTF-8 `<user_id>/<device_id>`.
pub fn parse_credential_identity(identity: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(identity).ok()?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_reads_back_as_its_two_ids() {
        let id = credential_identity("u", "d");
        assert_eq!(parse_credential_identity(id.as_bytes()), Some(("u", "d")));
        assert_eq!(parse_credential_identity(b"no slash"), None);
        assert_eq!(parse_credential_identity(&[0xff, b'/']), None);
    }

    #[test]
    fn the_proof_message_is_the_label_then_both_ids() {
        let m = device_key_proof_message(&[1; 16], &[2; 16]);
        assert_eq!(&m[..20], b"natter-device-key-v1");
        assert_eq!(&m[20..36], &[1; 16]);
        assert_eq!(&m[36..], &[2; 16]);
    }
}
