//! Secrets read from files (the admin token, the pepper, etcd's password).
//! Low on purpose: the server, the store and the config all read them, and
//! this module imports nothing of scopegate's.

use std::path::Path;

/// Reads a secret from a file, trimmed; the error names the file, never the
/// content. Like ssh with a private key, refuses a file that others may
/// access, or that a group other than scopegate's own may (Kubernetes mounts
/// Secrets group-readable by the pod's fsGroup, which is scopegate's group).
pub fn read_secret_file(path: &Path, min_chars: usize) -> Result<String, (String, String)> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|error| (shown.clone(), error.to_string()))?;
    let mode = metadata.mode();
    let own_group = metadata.gid() == rustix::process::getegid().as_raw();
    if mode & 0o007 != 0 || (mode & 0o070 != 0 && !own_group) {
        return Err((
            shown.clone(),
            format!(
                "is accessible by group or others (mode {:03o}); fix with: chmod 600 {shown}",
                mode & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|error| (shown.clone(), error.to_string()))?;
    let secret = text.trim();
    if secret.len() < min_chars {
        return Err((shown, format!("must hold at least {min_chars} characters")));
    }
    Ok(secret.to_owned())
}
