//! Bearer-token authentication: one token, kept in a file next to the store
//! (mode 0600, created on first start). Controllers sharing an etcd store
//! share one token through it ([`load_or_share_token`]), so `daolictl` works
//! against any of them.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Reads the token at `path`, creating it (0600, 32 random bytes as hex) if
/// it does not exist. Returns the token and whether it was created.
pub fn load_or_create_token(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("token file {} is empty", path.display()),
                ));
            }
            return Ok((t, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = new_token()?;
    write_token(path, &token)?;
    Ok((token, true))
}

/// 32 random bytes as hex.
fn new_token() -> std::io::Result<String> {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` (0600, must not exist) holding `token`.
fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// The token of a controller that shares its store with others: `share`
/// stores a candidate token in the shared store unless one is there and
/// returns the stored one. A token file that exists is the candidate and
/// must equal the shared token; a missing one is created (0600) with the
/// shared token. Returns the token and whether the file was created.
pub fn load_or_share_token(
    path: &Path,
    share: impl FnOnce(&str) -> std::io::Result<String>,
) -> std::io::Result<(String, bool)> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("token file {} is empty", path.display()),
            ))
        }
        Ok(t) => Some(t.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let candidate = match &existing {
        Some(t) => t.clone(),
        None => new_token()?,
    };
    let shared = share(&candidate)?;
    match existing {
        Some(t) if !token_eq(&t, &shared) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "token file {} differs from the token the other controllers on this store use \
                 (remove the file to take theirs)",
                path.display()
            ),
        )),
        Some(t) => Ok((t, false)),
        None => {
            write_token(path, &shared)?;
            Ok((shared, true))
        }
    }
}

/// Compares in time independent of where the strings differ.
pub fn token_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_file_is_private_and_stable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api-token");
        let (t, created) = load_or_create_token(&p).unwrap();
        assert!(created && t.len() == 64);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_token(&p).unwrap(), (t.clone(), false));
        assert!(token_eq(&t, &t.clone()) && !token_eq(&t, "x"));
    }

    #[test]
    fn shared_tokens() {
        let d = tempfile::tempdir().unwrap();
        let cluster = std::cell::RefCell::new(None::<String>);
        let share = |c: &str| {
            Ok(cluster
                .borrow_mut()
                .get_or_insert_with(|| c.to_string())
                .clone())
        };
        // The first controller's new token becomes the cluster's.
        let a = d.path().join("a");
        let (t, created) = load_or_share_token(&a, share).unwrap();
        assert!(created && t.len() == 64);
        assert_eq!(cluster.borrow().as_deref(), Some(t.as_str()));
        // The second one writes the cluster's token to its file.
        let b = d.path().join("b");
        assert_eq!(load_or_share_token(&b, share).unwrap(), (t.clone(), true));
        assert_eq!(load_or_share_token(&b, share).unwrap(), (t.clone(), false));
        // A file with another token is refused, and stays as it was.
        let c = d.path().join("c");
        std::fs::write(&c, "other\n").unwrap();
        let e = load_or_share_token(&c, share).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "other\n");
    }
}
