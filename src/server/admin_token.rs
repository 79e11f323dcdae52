//! The admin token: from a file, the environment, or generated once into
//! the data dir (mode 0600); its path is logged, never the token.

use std::io::Write;
use std::path::Path;

use super::settings::{AdminTokenSource, ServeConfig, ADMIN_TOKEN_FILE, MIN_ADMIN_TOKEN_CHARS};
use super::StartError;
use crate::token::new_admin_token;

pub(super) fn resolve_admin_token(config: &ServeConfig) -> Result<String, StartError> {
    let error = |path: &Path, reason: String| StartError::AdminToken {
        path: path.display().to_string(),
        reason,
    };
    match &config.admin_token {
        AdminTokenSource::Value(token) => {
            if token.trim().len() < MIN_ADMIN_TOKEN_CHARS {
                return Err(StartError::AdminToken {
                    path: "SCOPEGATE_ADMIN_TOKEN".into(),
                    reason: format!("must be at least {MIN_ADMIN_TOKEN_CHARS} characters"),
                });
            }
            Ok(token.trim().to_owned())
        }
        AdminTokenSource::File(path) => {
            crate::secret_file::read_secret_file(path, MIN_ADMIN_TOKEN_CHARS)
                .map_err(|(path, reason)| StartError::AdminToken { path, reason })
        }
        AdminTokenSource::DataDir => {
            let path = config.data_dir.join(ADMIN_TOKEN_FILE);
            if path.exists() {
                return crate::secret_file::read_secret_file(&path, MIN_ADMIN_TOKEN_CHARS)
                    .map_err(|(path, reason)| StartError::AdminToken { path, reason });
            }
            let token = new_admin_token();
            write_private_file(&path, &token).map_err(|io| error(&path, io.to_string()))?;
            tracing::info!(path = %path.display(), "generated an admin token (mode 0600); pass it as `authorization: Bearer <token>`");
            Ok(token)
        }
    }
}

pub(super) fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
