//! Host memory: `/proc/meminfo` and the huge page pools in sysfs.

use std::io;
use std::path::Path;

/// The fields of `/proc/meminfo` the checks need, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    /// `Hugepagesize`: the default huge page size.
    pub default_hugepage_bytes: Option<u64>,
}

impl MemInfo {
    /// Read `PROC/meminfo`.
    pub fn read(proc_root: &Path) -> io::Result<MemInfo> {
        let path = proc_root.join("meminfo");
        let text = std::fs::read_to_string(&path).map_err(crate::cannot_read(&path))?;
        Self::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no MemTotal line", path.display()),
            )
        })
    }

    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                let mut words = rest.split_whitespace();
                let value: u64 = words.next()?.parse().ok()?;
                match words.next() {
                    Some("kB") => value.checked_mul(1024),
                    None => Some(value),
                    Some(_) => None,
                }
            })
        };
        Some(MemInfo {
            total_bytes: field("MemTotal")?,
            default_hugepage_bytes: field("Hugepagesize"),
        })
    }
}

/// Free huge pages of `page_bytes`: on the given NUMA nodes, or host-wide for `None`.
pub fn free_hugepages(sysfs: &Path, page_bytes: u64, nodes: Option<&[u32]>) -> io::Result<u64> {
    let pool = format!("hugepages-{}kB/free_hugepages", page_bytes / 1024);
    let read = |path: &Path| -> io::Result<u64> {
        let text = std::fs::read_to_string(path).map_err(crate::cannot_read(path))?;
        text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds {:?}, not a number", path.display(), text.trim()),
            )
        })
    };
    match nodes {
        None => read(&sysfs.join("kernel/mm/hugepages").join(&pool)),
        Some(nodes) => nodes.iter().try_fold(0, |sum, node| {
            let path = sysfs
                .join(format!("devices/system/node/node{node}/hugepages"))
                .join(&pool);
            Ok(sum + read(&path)?)
        }),
    }
}

/// Parse a libvirt nodeset such as `0`, `0-2,5` or `^1` (exclusions are not supported
/// and give `None`: the caller then checks host-wide).
pub fn parse_nodeset(set: &str) -> Option<Vec<u32>> {
    let mut nodes = Vec::new();
    for part in set.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                nodes.extend(a..=b);
            }
            None => nodes.push(part.parse().ok()?),
        }
    }
    Some(nodes)
}

/// Bytes as an operator reads them: `16.0 GiB`, `512 MiB`.
pub fn human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let m = MemInfo::parse(
            "MemTotal:       65536000 kB\nMemFree: 1 kB\nHugepagesize:    2048 kB\n",
        )
        .expect("parse");
        assert_eq!(m.total_bytes, 65536000 * 1024);
        assert_eq!(m.default_hugepage_bytes, Some(2 << 20));
        assert_eq!(MemInfo::parse("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn nodesets() {
        assert_eq!(parse_nodeset("0"), Some(vec![0]));
        assert_eq!(parse_nodeset("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_nodeset("^1"), None);
        assert_eq!(parse_nodeset("3-1"), None);
    }

    #[test]
    fn hugepage_pools() {
        let sys = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, v: &str| {
            let p = sys.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, v).expect("write");
        };
        write(
            "kernel/mm/hugepages/hugepages-1048576kB/free_hugepages",
            "12\n",
        );
        write(
            "devices/system/node/node0/hugepages/hugepages-1048576kB/free_hugepages",
            "4\n",
        );
        write(
            "devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages",
            "8\n",
        );
        assert_eq!(
            free_hugepages(sys.path(), 1 << 30, None).expect("global"),
            12
        );
        assert_eq!(
            free_hugepages(sys.path(), 1 << 30, Some(&[1])).expect("node"),
            8
        );
        assert!(
            free_hugepages(sys.path(), 2 << 20, None).is_err(),
            "no 2 MiB pool"
        );
    }

    #[test]
    fn nodeset_ranges_may_be_one_node_and_not_absurdly_long() {
        assert_eq!(parse_nodeset("3-3"), Some(vec![3]));
        assert_eq!(parse_nodeset(" 1 - 2 , 4"), Some(vec![1, 2, 4]));
        assert_eq!(parse_nodeset("0-4096").map(|n| n.len()), Some(4097));
        assert_eq!(parse_nodeset("0-4097"), None);
        assert_eq!(
            parse_nodeset("5-4101").map(|n| (n.len(), n[4096])),
            Some((4097, 4101))
        );
        assert_eq!(parse_nodeset("x"), None);
        assert_eq!(parse_nodeset("1-x"), None);
    }

    #[test]
    fn bytes_in_gib_from_one_gib_on_else_in_mib() {
        assert_eq!(human(16 << 30), "16.0 GiB");
        assert_eq!(human((3 << 30) / 2), "1.5 GiB");
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human((1 << 30) - 1), "1023 MiB");
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(0), "0 MiB");
    }
}
