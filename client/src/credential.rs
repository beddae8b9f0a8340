//! What a client presents as its bearer credential: a fixed API key, or a token file that is
//! re-read as it changes (the kubelet rewrites a projected ServiceAccount token well before it
//! expires, so a long-lived client must not keep the first one).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a token read from a file is used before the file is read again.
const REREAD_AFTER: Duration = Duration::from_secs(30);

/// A bearer credential. `Debug` never shows the secret.
#[derive(Clone)]
pub(crate) enum Credential {
    Fixed(Arc<str>),
    File(Arc<TokenFile>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Fixed(_) => f.write_str("Credential::Fixed(<redacted>)"),
            Credential::File(t) => write!(f, "Credential::File({})", t.path.display()),
        }
    }
}

pub(crate) struct TokenFile {
    path: PathBuf,
    /// The token last read and when.
    read: Mutex<Option<(Arc<str>, Instant)>>,
}

impl Credential {
    pub(crate) fn fixed(key: impl Into<String>) -> Credential {
        Credential::Fixed(Arc::from(key.into()))
    }

    pub(crate) fn file(path: &Path) -> Credential {
        Credential::File(Arc::new(TokenFile { path: path.to_path_buf(), read: Mutex::new(None) }))
    }

    /// The credential to present now. A token file that cannot be read fails the call naming
    /// the file; one read less than [`REREAD_AFTER`] ago is not read again.
    pub(crate) fn current(&self) -> Result<Arc<str>, crate::Error> {
        let file = match self {
            Credential::Fixed(key) => return Ok(key.clone()),
            Credential::File(file) => file,
        };
        let mut read = file.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, at)) = read.as_ref()
            && at.elapsed() < REREAD_AFTER
        {
            return Ok(token.clone());
        }
        let fail = |reason: String| crate::Error::Credential { path: file.path.display().to_string(), reason };
        let text = std::fs::read_to_string(&file.path).map_err(|e| fail(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(fail("the token file is empty".into()));
        }
        let token: Arc<str> = Arc::from(token);
        *read = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Forgets the token read last, so the next call reads the file (after a 401: the token may
    /// have been rotated since).
    pub(crate) fn refresh(&self) {
        if let Credential::File(file) = self {
            *file.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_token_file_is_read_again_and_never_printed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n")?;
        let credential = Credential::file(&path);
        assert_eq!(&*credential.current()?, "first-token");
        std::fs::write(&path, "second-token\n")?;
        assert_eq!(&*credential.current()?, "first-token", "read again only after a while");
        credential.refresh();
        assert_eq!(&*credential.current()?, "second-token");
        assert!(!format!("{credential:?}").contains("second-token"), "{credential:?}");
        assert!(!format!("{:?}", Credential::fixed("s3cret")).contains("s3cret"));

        std::fs::write(&path, "  \n")?;
        credential.refresh();
        let err = credential.current().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("empty") && err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_file(&path)?;
        credential.refresh();
        assert!(credential.current().is_err(), "a missing file fails the call");
        Ok(())
    }
}
