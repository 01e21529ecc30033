//! `[audit] witness_file`: the latest signed checkpoint, kept outside `data_dir`. Someone who
//! can write the store can remove its checkpoints together with the entries they cover (or
//! rewrite every entry's time), and the store alone is then consistent; the witness is not
//! theirs to change, so `audit verify`, the gate's start-up check and retention hold the log
//! against it, as against the log stream's copies.

use std::io::Write as _;
use std::path::Path;

use super::checkpoint::Checkpoint;

/// Replaces the witness with `cp` (temp file, fsync, rename: never half written).
pub fn write(path: &Path, cp: &Checkpoint) -> Result<(), String> {
    let json = serde_json::to_string(cp).map_err(|e| e.to_string())?;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let done = (|| -> std::io::Result<()> {
        // A fresh file of our own, never one planted in its place (a link is not followed).
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(json.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    done.map_err(|e| format!("witness file {}: {e}", path.display()))
}

/// The checkpoint in the witness; `None` when it was not written yet.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, String> {
    let mut f = match crate::store::cache::open_cached(path, None) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|e| format!("{} is not a checkpoint: {e}", path.display()))
}
