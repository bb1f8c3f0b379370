//! How logs refer to a person: a keyed hash of the NISS, never the NISS itself.
//!
//! The key is a secret of the hub (a file, created on first start). With it, an investigator can
//! find the log lines about a given NISS by hashing it; without it, the lines say nothing about
//! who they concern, and the hash cannot be reversed by trying every NISS.

use std::fmt;
use std::path::Path;

use bcss_domain::Niss;

/// The secret key of the person hash.
#[derive(Clone)]
pub struct PersonKey([u8; 32]);

impl fmt::Debug for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonKey(..)")
    }
}

impl PersonKey {
    pub fn new(key: [u8; 32]) -> PersonKey {
        PersonKey(key)
    }

    /// Reads the key (64 hex digits) from `file`, creating the file with a random key when it
    /// does not exist; a key file readable by others is made the owner's only.
    pub fn load_or_create(file: &Path) -> std::io::Result<PersonKey> {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let key = parse_hex(text.trim()).map(PersonKey).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not 64 hex digits", file.display()),
                    )
                })?;
                if bcss_store::keep_secret_file(file)? {
                    tracing::warn!(
                        message = "The logs' person key was readable by others: now by its \
                                   owner only.",
                        file = %file.display(),
                    );
                }
                Ok(key)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                // With the key, every `p:…` of the logs could be reversed by hashing all NISS:
                // the owner alone may read it.
                bcss_store::create_secret_file(file, (hex + "\n").as_bytes())?;
                Ok(PersonKey(key))
            }
            Err(error) => Err(error),
        }
    }

    /// The reference that stands for `niss` in logs: 16 hex digits of a keyed BLAKE3 hash.
    pub fn person(&self, niss: Niss) -> PersonRef {
        let hash = blake3::keyed_hash(&self.0, niss.digits().as_bytes());
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        PersonRef(u64::from_be_bytes(bytes))
    }
}

/// A person as logs name them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PersonRef(u64);

impl fmt::Display for PersonRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p:{:016x}", self.0)
    }
}

impl fmt::Debug for PersonRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_depends_on_the_key_and_never_shows_the_niss() {
        let niss = Niss::compose(850_730, 33, false).unwrap();
        let a = PersonKey::new([1; 32]).person(niss);
        let b = PersonKey::new([2; 32]).person(niss);
        assert_ne!(a, b);
        assert_eq!(a, PersonKey::new([1; 32]).person(niss));
        assert!(!a.to_string().contains(&niss.digits()));
    }

    #[test]
    fn a_created_key_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/key");
        let niss = Niss::compose(850_730, 33, false).unwrap();
        let first = PersonKey::load_or_create(&file).unwrap().person(niss);
        let again = PersonKey::load_or_create(&file).unwrap().person(niss);
        assert_eq!(first, again);
        // The owner alone may read it.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // One restored readable by others is read, and made the owner's only.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            PersonKey::load_or_create(&file).unwrap().person(niss),
            first
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        std::fs::write(&file, "not hex").unwrap();
        assert!(PersonKey::load_or_create(&file).is_err());
    }
}
