//! libvirt's own record of running domains: `/run/libvirt/qemu/NAME.xml`, read as files.
//! (Never through virsh or the API: from a hook that deadlocks libvirtd.)

use std::path::{Path, PathBuf};

use crate::domain::{domain_from_status_xml, Domain};

/// Where libvirt keeps the status of running qemu domains.
pub const DEFAULT_RUN_DIR: &str = "/run/libvirt/qemu";
/// Environment variable that replaces [`DEFAULT_RUN_DIR`] (tests, unusual hosts).
pub const RUN_DIR_ENV: &str = "GPU_PASSTHROUGH_LIBVIRT_RUN";

/// The status directory in force: `$GPU_PASSTHROUGH_LIBVIRT_RUN`, else [`DEFAULT_RUN_DIR`].
pub fn run_dir_from_env() -> PathBuf {
    crate::env_path(RUN_DIR_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The running domains, and a message for each status file that could not be read
/// (one odd file must not hide the others).
#[derive(Debug, Default)]
pub struct RunningDomains {
    pub domains: Vec<Domain>,
    pub unreadable: Vec<String>,
}

/// Read every `*.xml` status file of `run_dir`. A missing directory means none run.
pub fn running_domains(run_dir: &Path) -> RunningDomains {
    let mut out = RunningDomains::default();
    let entries = match std::fs::read_dir(run_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.unreadable.push(format!("{}: {e}", run_dir.display()));
            return out;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|xml| domain_from_status_xml(&xml).map_err(|e| e.to_string()))
        {
            Ok(domain) => out.domains.push(domain),
            Err(e) => out.unreadable.push(format!("{}: {e}", path.display())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_are_read_in_name_order_and_odd_ones_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = |name: &str| {
            format!("<domstatus state='running'><domain><name>{name}</name><memory>1</memory></domain></domstatus>")
        };
        std::fs::write(dir.path().join("b.xml"), status("b")).expect("write");
        std::fs::write(dir.path().join("a.xml"), status("a")).expect("write");
        std::fs::write(dir.path().join("a.pid"), "4242").expect("write");
        std::fs::write(dir.path().join("c.xml"), "<domain/>").expect("write");
        let got = running_domains(dir.path());
        let names: Vec<&str> = got.domains.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            got.unreadable,
            [format!(
                "{}: line 1, column 1: not a libvirt status file: the document is <domain>, not <domstatus>",
                dir.path().join("c.xml").display()
            )]
        );
        // No directory: nothing runs. Not a directory: said, as nothing can be known.
        let none = running_domains(&dir.path().join("none"));
        assert!(none.domains.is_empty() && none.unreadable.is_empty());
        let file = dir.path().join("a.pid");
        let odd = running_domains(&file);
        assert_eq!(
            odd.unreadable,
            [format!("{}: Not a directory (os error 20)", file.display())]
        );
    }

    #[test]
    fn the_run_dir_comes_from_the_environment() {
        // The only unit test that touches this variable.
        std::env::set_var(RUN_DIR_ENV, "/tmp/run");
        assert_eq!(run_dir_from_env(), PathBuf::from("/tmp/run"));
        std::env::remove_var(RUN_DIR_ENV);
        assert_eq!(run_dir_from_env(), PathBuf::from(DEFAULT_RUN_DIR));
    }
}
