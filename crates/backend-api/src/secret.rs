//! A string that must never reach a log: private keys, AWS secret access keys.

use zeroize::Zeroize;

/// Text that redacts itself: `Debug` and `Display` print `[REDACTED]`, and the bytes are
/// zeroized when the value is dropped. The content is reachable only through
/// [`Secret::expose`], so every place that reads it is greppable.
///
/// `Secret` deserializes (so configuration can hold credentials) but deliberately does not
/// serialize, so it cannot be written into JSON output or the usage ledger by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; from here on it prints as a redaction.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret content. Call this only where the value is handed to the thing that needs
    /// it (a signer, a file written with tight permissions), never to build a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Credentials {
        access_key_id: String,
        secret_access_key: Secret,
    }

    const CONTENT: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    #[test]
    fn never_prints_its_content() {
        let secret = Secret::new(CONTENT);
        let creds = Credentials { access_key_id: "AKIDEXAMPLE".into(), secret_access_key: secret.clone() };
        for printed in [
            format!("{secret}"),
            format!("{secret:?}"),
            format!("{secret:#?}"),
            format!("{creds:?}"),
            format!("{creds:#?}"),
        ] {
            assert!(!printed.contains(CONTENT), "secret leaked in {printed}");
            assert!(!printed.contains("wJalr"), "part of the secret leaked in {printed}");
            assert!(printed.contains("[REDACTED]"), "no redaction marker in {printed}");
        }
        assert_eq!(secret.expose(), CONTENT);
    }

    #[test]
    fn deserializes_from_plain_text() {
        let secret: Secret = serde_json::from_str(&format!("\"{CONTENT}\"")).expect("json string");
        assert_eq!(secret.expose(), CONTENT);
    }
}
