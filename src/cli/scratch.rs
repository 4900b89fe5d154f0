//! The throw-away store folder of `demo` and `simulate` (`<out>/state`):
//! each run starts from an empty store, so the folder is deleted first —
//! but only if billstream made it. A folder billstream creates holds a
//! marker file; one without it (the user's own folder that happens to be
//! called `state`, or a store from before the marker) is never deleted:
//! the run stops and says what to do.

use std::path::Path;

use anyhow::Context;

/// The marker file in a state folder that `demo` or `simulate` created.
pub const MARKER: &str = ".billstream-scratch-state";

const MARKER_TEXT: &str = "This folder was created by `billstream demo` or `billstream simulate` \
as a scratch store. The next run into the same --out deletes and recreates it.\n";

/// Makes `dir` an empty state folder of our own: deletes it if it is
/// ours, refuses if something else is there, creates it with the marker.
pub fn fresh_state_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(meta) => {
            let ours = meta.is_dir() && dir.join(MARKER).is_file();
            if !ours {
                anyhow::bail!(
                    "{} exists and was not created by billstream (it has no {MARKER} file), \
                     so it is not deleted: move or delete it yourself, or choose another --out",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), MARKER_TEXT)
        .with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_12_a_state_folder_without_the_marker_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("mine.txt"), "x").unwrap();
        let e = fresh_state_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("not created by billstream"), "{e}");
        assert!(dir.join("mine.txt").exists());
        // A file named `state` is not ours either.
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(fresh_state_dir(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }

    #[test]
    fn issue_12_our_state_folder_is_emptied_and_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fresh_state_dir(&dir).unwrap();
        assert!(dir.join(MARKER).is_file());
        std::fs::write(dir.join("billstream.redb"), "old store").unwrap();
        fresh_state_dir(&dir).unwrap();
        assert!(dir.join(MARKER).is_file());
        assert!(!dir.join("billstream.redb").exists());
    }
}
