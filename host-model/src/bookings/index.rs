//! The index of a checked bookings file, so that the hook need not check 10,000
//! bookings at every GPU start.
//!
//! Checking a file of 10,000 bookings takes milliseconds (reading and parsing the whole
//! JSON), more than a GPU start may spend on bookings. The installer (`metrics`, run by
//! its timer every 30 s, and `bookings import|list|violations`) checks the whole file
//! and writes `STATE/bookings.index`: the file's identity as `stat` gives it (device,
//! inode, size, modification and change times) and where each booking stands in it. The hook maps the file, finds its project's names and parses only the bookings
//! around them. An index that does not describe the file as it is now is ignored, and
//! the hook checks the whole file as before: a changed file is never read through a
//! stale index.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{select, spans, Booking, BookingsError};

/// The index's file name in the state directory.
pub const INDEX_FILE: &str = "bookings.index";

const MAGIC: &[u8] = b"gpu-passthrough bookings index 1\n";

/// The line that ties an index to one version of one file: a file written again, in
/// place or by a rename, has another change time or inode.
fn identity(meta: &Metadata, entries: usize) -> Vec<u8> {
    format!(
        "{} {} {} {}.{} {}.{} {}\n",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        entries
    )
    .into_bytes()
}

/// Check the whole bookings file at `path` and return its index and its bookings. An
/// error is the file's, as [`super::load`] gives it.
pub fn build(path: &Path) -> Result<(Vec<u8>, Vec<Booking>), BookingsError> {
    let err = |message: String| BookingsError {
        path: path.to_owned(),
        message,
    };
    let mut file = File::open(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    if text.len() as u64 != meta.size() {
        return Err(err("it changed while it was read; run again".into()));
    }
    let spans = spans(&text).map_err(err)?;
    // Every booking is checked, as the hook would check its own.
    let all = select(text.as_bytes(), &spans, &[]).map_err(err)?;
    let mut out = MAGIC.to_vec();
    out.extend(identity(&meta, spans.len()));
    for (start, end) in &spans {
        let (Ok(s), Ok(e)) = (u32::try_from(*start), u32::try_from(*end)) else {
            return Err(err("it is larger than 4 GiB".into()));
        };
        out.extend(s.to_le_bytes());
        out.extend(e.to_le_bytes());
    }
    Ok((out, all))
}

/// The bookings' spans, when `index` describes the file (`meta`) exactly.
fn read(index: &[u8], meta: &Metadata) -> Option<Vec<(usize, usize)>> {
    let rest = index.strip_prefix(MAGIC)?;
    let newline = memchr::memchr(b'\n', rest)?;
    let (line, table) = (&rest[..=newline], &rest[newline + 1..]);
    let entries: usize = std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(5)?
        .trim_end()
        .parse()
        .ok()?;
    if line != identity(meta, entries).as_slice() || table.len() != entries.checked_mul(8)? {
        return None;
    }
    let size = usize::try_from(meta.size()).ok()?;
    let mut spans = Vec::with_capacity(entries);
    let mut last = 0;
    for pair in table.chunks_exact(8) {
        let start = u32::from_le_bytes(pair[..4].try_into().ok()?) as usize;
        let end = u32::from_le_bytes(pair[4..].try_into().ok()?) as usize;
        if start < last || end <= start || end > size {
            return None;
        }
        spans.push((start, end));
        last = end;
    }
    Some(spans)
}

/// The bookings of `file` (opened from `path`) that name one of `names`, through the
/// index at `index_path`; `None` when there is no index for the file as it is now.
pub(super) fn load_indexed(
    file: &File,
    meta: &Metadata,
    index_path: &Path,
    names: &[&str],
) -> Option<Result<Vec<Booking>, String>> {
    let index_file = File::open(index_path).ok()?;
    let index_len = usize::try_from(index_file.metadata().ok()?.len()).ok()?;
    let index = crate::mapped::Mapped::new(&index_file, index_len).ok()?;
    let spans = read(index.bytes(), meta)?;
    let map = crate::mapped::Mapped::new(file, spans.last().map_or(0, |s| s.1)).ok()?;
    let text = map.bytes();
    // A span that does not hold an object means the file is not the one indexed.
    if spans
        .iter()
        .any(|&(s, e)| text[s] != b'{' || text[e - 1] != b'}')
    {
        return None;
    }
    Some(select(text, &spans, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking(id: &str, project: &str) -> String {
        format!(
            "{{\"id\": \"{id}\", \"project\": \"{project}\", \"start\": \"2000-01-01T00:00:00Z\", \"end\": \"2100-01-01T00:00:00Z\"}}"
        )
    }

    fn file_of(entries: &[String]) -> String {
        format!("{{\"bookings\": [\n{}\n]}}\n", entries.join(",\n"))
    }

    /// Whether `index` (its bytes) describes the file at `path` as it is now.
    fn is_current(index: &[u8], path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|meta| read(index, &meta).is_some())
    }

    fn ids(b: &[Booking]) -> Vec<&str> {
        b.iter().map(|b| b.entry.id.as_str()).collect()
    }

    #[test]
    fn the_index_gives_what_the_whole_file_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        let entries: Vec<String> = (0..20)
            .map(|i| booking(&format!("b{i}"), &format!("p{}", i % 3)))
            .collect();
        let text = file_of(&entries);
        std::fs::write(&path, &text).expect("write");
        let (bytes, all) = build(&path).expect("index");
        assert_eq!(all.len(), 20);
        let ix = dir.path().join(INDEX_FILE);
        std::fs::write(&ix, &bytes).expect("write index");
        let file = File::open(&path).expect("open");
        let meta = file.metadata().expect("stat");
        for names in [&["p1"][..], &["p0", "p2"], &["nobody"], &["b7"]] {
            let indexed = load_indexed(&file, &meta, &ix, names)
                .expect("the index describes the file")
                .expect("bookings");
            let whole = super::super::parse_matching(&text, names).expect("bookings");
            assert_eq!(ids(&indexed), ids(&whole), "{names:?}");
        }
        assert_eq!(
            ids(&load_indexed(&file, &meta, &ix, &["p1"]).unwrap().unwrap()),
            ["b1", "b4", "b7", "b10", "b13", "b16", "b19"]
        );
    }

    #[test]
    fn an_index_stops_describing_a_file_written_again_even_to_the_same_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        let text = file_of(&[booking("a", "p1"), booking("b", "p2")]);
        std::fs::write(&path, &text).expect("write");
        let (bytes, _) = build(&path).expect("index");
        assert!(is_current(&bytes, &path));

        // In place, same size, same inode.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, text.replace("\"p1\"", "\"p3\"")).expect("rewrite");
        assert!(!is_current(&bytes, &path));

        // Indexed again; then replaced by a rename with the very same bytes.
        let (bytes, _) = build(&path).expect("index");
        assert!(is_current(&bytes, &path));
        let tmp = dir.path().join("new.json");
        std::fs::write(&tmp, std::fs::read(&path).expect("read")).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert!(!is_current(&bytes, &path));

        // A truncated or foreign index describes nothing.
        let (bytes, _) = build(&path).expect("index");
        assert!(is_current(&bytes, &path));
        assert!(!is_current(&bytes[..bytes.len() - 1], &path));
        assert!(!is_current(b"something else\n", &path));
    }

    #[test]
    fn a_broken_file_gets_no_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        std::fs::write(&path, "{\"bookings\": [{\"id\": \"a\"}]}").expect("write");
        let e = build(&path).expect_err("broken");
        assert!(e.message.contains("missing field `project`"), "{e}");
    }

    #[test]
    fn a_table_out_of_order_empty_or_past_the_files_end_describes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bookings.json");
        let text = file_of(&[booking("a", "p1"), booking("b", "p2")]);
        std::fs::write(&path, &text).expect("write");
        let (bytes, _) = build(&path).expect("index");
        let meta = std::fs::metadata(&path).expect("stat");
        let head = bytes.len() - 16;
        let spans = read(&bytes, &meta).expect("as built");
        let [(s1, e1), (s2, e2)] = spans[..] else {
            panic!("two spans: {spans:?}")
        };
        let size = text.len();
        let with = |table: [(usize, usize); 2]| {
            let mut b = bytes[..head].to_vec();
            for (s, e) in table {
                b.extend((s as u32).to_le_bytes());
                b.extend((e as u32).to_le_bytes());
            }
            b
        };
        for (what, table, ok) in [
            ("as built", [(s1, e1), (s2, e2)], true),
            (
                "the second before the first's end",
                [(s1, e1), (e1 - 1, e2)],
                false,
            ),
            ("out of order", [(s2, e2), (s1, e1)], false),
            ("an empty span", [(s1, e1), (s2, s2)], false),
            ("a span turned around", [(s1, e1), (e2, s2)], false),
            ("to the file's very end", [(s1, e1), (s2, size)], true),
            ("past the file's end", [(s1, e1), (s2, size + 1)], false),
            ("the first at the file's start", [(0, e1), (s2, e2)], true),
        ] {
            assert_eq!(read(&with(table), &meta).is_some(), ok, "{what}");
        }

        // A span that does not end a booking's object: the file is not the one indexed.
        let ix = dir.path().join(INDEX_FILE);
        std::fs::write(&ix, with([(s1, e1), (s2, e2 - 1)])).expect("write index");
        let file = File::open(&path).expect("open");
        assert_eq!(load_indexed(&file, &meta, &ix, &["p2"]), None);
        std::fs::write(&ix, with([(s1 + 1, e1), (s2, e2)])).expect("write index");
        assert_eq!(load_indexed(&file, &meta, &ix, &["p1"]), None);
    }
}
