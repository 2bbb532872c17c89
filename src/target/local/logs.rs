//! Reading and following replica logs (`logs/<thespian>-<index>.log`).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LocalError;
use super::state::StateDir;

/// One replica's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSource {
    pub thespian: String,
    pub index: u32,
    pub path: PathBuf,
}

impl LogSource {
    pub fn label(&self) -> String {
        format!("{}[{}]", self.thespian, self.index)
    }
}

/// The logs of `name` (one replica, or all): the replicas in the state when it is running, else the log
/// files left behind (after `down`, or for a thespian removed from the manifest).
pub fn sources(dir: &StateDir, name: &str, replica: Option<u32>) -> Result<Vec<LogSource>, LocalError> {
    let on_disk = log_files(&dir.logs_dir());
    let state = dir.load()?;
    let mut known: BTreeSet<String> = on_disk.iter().map(|s| s.thespian.clone()).collect();
    if let Some(state) = &state {
        known.extend(state.thespians.keys().cloned());
    }
    if known.is_empty() {
        return Err(LocalError::NoLogs {
            dir: dir.root.clone(),
        });
    }
    if !known.contains(name) {
        return Err(LocalError::UnknownThespian {
            name: name.to_string(),
            known: known.into_iter().collect(),
        });
    }
    let mut found: Vec<LogSource> = match state.as_ref().and_then(|s| s.thespians.get(name)) {
        Some(t) => t
            .replicas
            .iter()
            .map(|r| LogSource {
                thespian: name.to_string(),
                index: r.index,
                path: r.log.clone(),
            })
            .collect(),
        None => on_disk.into_iter().filter(|s| s.thespian == name).collect(),
    };
    if let Some(want) = replica {
        let indices: Vec<u32> = found.iter().map(|s| s.index).collect();
        found.retain(|s| s.index == want);
        if found.is_empty() {
            return Err(LocalError::UnknownReplica {
                name: name.to_string(),
                replica: want,
                known: indices,
            });
        }
    }
    Ok(found)
}

/// `NAME-INDEX.log` files in `logs` (not the `.prev.log` of replaced processes), sorted.
fn log_files(logs: &Path) -> Vec<LogSource> {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return Vec::new();
    };
    let mut out: Vec<LogSource> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let stem = file.strip_suffix(".log")?;
            let (thespian, index) = stem.rsplit_once('-')?;
            Some(LogSource {
                thespian: thespian.to_string(),
                index: index.parse().ok()?,
                path: e.path(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.thespian, a.index).cmp(&(&b.thespian, b.index)));
    out
}

/// The last `n` complete lines of `path` (all lines when `n` is `None`), and the offset reading stopped at
/// (where following continues). Reads backwards in blocks, so `-n 20` of a large log stays cheap.
pub fn read_lines(path: &Path, n: Option<usize>) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = 0;
    if let Some(n) = n {
        const BLOCK: u64 = 64 * 1024;
        let mut pos = len;
        // The newline closest to the end closes the last complete line; `n` newlines before it, the
        // wanted lines begin.
        let mut last_complete = false;
        let mut newlines = 0;
        let mut buf = vec![0u8; 64 * 1024];
        'scan: while pos > 0 {
            let size = BLOCK.min(pos);
            pos -= size;
            file.seek(SeekFrom::Start(pos))?;
            let chunk = &mut buf[..usize::try_from(size).unwrap_or(0)];
            file.read_exact(chunk)?;
            for (i, &b) in chunk.iter().enumerate().rev() {
                if b != b'\n' {
                    continue;
                }
                let after = pos + i as u64 + 1;
                if !last_complete {
                    last_complete = true;
                    if n == 0 {
                        start = after;
                        break 'scan;
                    }
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    start = after;
                    break 'scan;
                }
            }
        }
    }
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    // A line still being written is left for the follower.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let lines = String::from_utf8_lossy(&bytes[..complete])
        .lines()
        .map(str::to_string)
        .collect();
    Ok((lines, start + complete as u64))
}

/// Follows one log like `tail -F`: new complete lines as they are appended, and the new file from its
/// start when the replica is restarted (its log is replaced by a fresh file).
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf, offset: u64) -> Self {
        let file = File::open(&path).ok();
        let inode = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.ino());
        Follower {
            path,
            file,
            inode,
            offset,
            partial: Vec::new(),
        }
    }

    /// Complete lines written since the last call.
    pub fn poll(&mut self) -> Vec<String> {
        let mut lines = self.read_new();
        // A different file at the path: the old one is finished (its last lines were just read).
        if let Ok(meta) = std::fs::metadata(&self.path)
            && (meta.ino() != self.inode || meta.len() < self.offset)
            && let Ok(file) = File::open(&self.path)
        {
            self.inode = meta.ino();
            self.file = Some(file);
            self.offset = 0;
            self.partial.clear();
            lines.extend(self.read_new());
        }
        lines
    }

    fn read_new(&mut self) -> Vec<String> {
        let Some(file) = &mut self.file else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&done)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn the_last_n_lines_and_where_to_follow_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g-0.log");
        std::fs::write(&path, "one\ntwo\nthree\npart").unwrap();
        assert_eq!(
            read_lines(&path, None).unwrap(),
            (vec!["one".into(), "two".into(), "three".into()], 14)
        );
        assert_eq!(read_lines(&path, Some(2)).unwrap().0, ["two", "three"]);
        assert_eq!(read_lines(&path, Some(10)).unwrap().0, ["one", "two", "three"]);
        assert!(read_lines(&path, Some(0)).unwrap().0.is_empty());
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(read_lines(&path, Some(1)).unwrap().0, ["three"]);
    }

    #[test]
    fn many_lines_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g-0.log");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let (lines, offset) = read_lines(&path, Some(3)).unwrap();
        assert_eq!(lines, ["line 19997", "line 19998", "line 19999"]);
        assert_eq!(offset, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn the_follower_sees_appends_whole_lines_only_and_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g-0.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = Follower::new(path.clone(), 4);
        assert!(f.poll().is_empty());
        let mut w = File::options().append(true).open(&path).unwrap();
        w.write_all(b"a\nb").unwrap();
        assert_eq!(f.poll(), ["a"]);
        w.write_all(b"c\n").unwrap();
        assert_eq!(f.poll(), ["bc"]);
        // A restart: the old file is renamed away (its writer finishes there), a fresh one takes the path.
        std::fs::rename(&path, dir.path().join("g-0.prev.log")).unwrap();
        w.write_all(b"last words\n").unwrap();
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(f.poll(), ["last words", "new"]);
    }

    #[test]
    fn sources_come_from_the_state_or_the_files_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().to_path_buf());
        assert!(matches!(
            sources(&sd, "gilbert", None),
            Err(LocalError::NoLogs { .. })
        ));
        sd.create().unwrap();
        for f in [
            "gilbert-0.log",
            "gilbert-1.log",
            "gilbert-1.prev.log",
            "my-svc-0.log",
        ] {
            std::fs::write(sd.logs_dir().join(f), "x\n").unwrap();
        }
        let all = sources(&sd, "gilbert", None).unwrap();
        assert_eq!(
            all.iter().map(LogSource::label).collect::<Vec<_>>(),
            ["gilbert[0]", "gilbert[1]"]
        );
        assert_eq!(sources(&sd, "my-svc", None).unwrap().len(), 1);
        match sources(&sd, "hamlet", None) {
            Err(LocalError::UnknownThespian { known, .. }) => assert_eq!(known, ["gilbert", "my-svc"]),
            other => panic!("{other:?}"),
        }
        match sources(&sd, "gilbert", Some(5)) {
            Err(e @ LocalError::UnknownReplica { .. }) => assert!(e.to_string().contains("0, 1"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
