//! The files that hold a host's kernel command line, and an editor for them that
//! changes whole words and nothing else.
//!
//! EL8, EL9 and EL10 keep the command line in several places, and grubby rewrites all
//! of them: each BLS boot entry's `options` line (EL9/EL10; EL8 entries say
//! `options $kernelopts`), `kernelopts` in grubenv (EL8), GRUB_CMDLINE_LINUX in
//! /etc/default/grub (for grub2-mkconfig) and /etc/kernel/cmdline (for kernels
//! installed later; grubby creates it on EL8). Exact undo records each of them before
//! grubby runs.

use std::path::{Path, PathBuf};

use crate::files::under;

pub const GRUB_DEFAULT: &str = "/etc/default/grub";
pub const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";
pub const BLS_ENTRIES: &str = "/boot/loader/entries";
pub const GRUBENV: &str = "/boot/grub2/grubenv";

/// Which kind of command-line file a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GRUB_CMDLINE_LINUX="..."` in /etc/default/grub.
    GrubDefault,
    /// A BLS entry's `options ...` line.
    BlsEntry,
    /// `kernelopts=...` in grubenv, a block of exactly 1024 bytes padded with `#`.
    GrubEnv,
    /// /etc/kernel/cmdline: one line.
    KernelCmdline,
}

impl Kind {
    /// The kind of the host path `path` (as install records it), if it holds a
    /// command line.
    pub fn of(path: &str) -> Option<Kind> {
        if path == GRUB_DEFAULT {
            Some(Kind::GrubDefault)
        } else if path == KERNEL_CMDLINE {
            Some(Kind::KernelCmdline)
        } else if path.ends_with("/grubenv") {
            Some(Kind::GrubEnv)
        } else if path.starts_with(BLS_ENTRIES) && path.ends_with(".conf") {
            Some(Kind::BlsEntry)
        } else {
            None
        }
    }
}

/// The host paths of every file grubby may change under `root`: the BLS entries, the
/// grubenv (where its link leads), GRUB_CMDLINE_LINUX's file and /etc/kernel/cmdline,
/// whether or not they exist yet.
pub fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(under(root, BLS_ENTRIES)) {
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        names.sort();
        out.extend(names.into_iter().map(|n| format!("{BLS_ENTRIES}/{n}")));
    }
    let env = resolve_in_root(root, GRUBENV);
    if under(root, &env).is_file() {
        out.push(env);
    }
    out.push(GRUB_DEFAULT.to_owned());
    out.push(KERNEL_CMDLINE.to_owned());
    out
}

/// `path` with its symlinks followed inside `root` (EFI hosts link
/// /boot/grub2/grubenv to /boot/efi/EFI/<distro>/grubenv).
fn resolve_in_root(root: &Path, path: &str) -> String {
    let mut current = PathBuf::from(path);
    for _ in 0..8 {
        match std::fs::read_link(under(root, &current.to_string_lossy())) {
            Ok(target) if target.is_absolute() => current = target,
            Ok(target) => {
                let parent = current.parent().unwrap_or(Path::new("/")).to_owned();
                current = normalize(&parent.join(target));
            }
            Err(_) => break,
        }
    }
    current.to_string_lossy().into_owned()
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Where in `text` the command line of a file of `kind` is: the byte range of its
/// value, or `None` when the file has none (an EL8 entry's `$kernelopts` counts as
/// none: grubby leaves it alone).
fn value_range(kind: Kind, text: &str) -> Option<(usize, usize)> {
    match kind {
        Kind::KernelCmdline => {
            let end = text.find('\n').unwrap_or(text.len());
            Some((0, end))
        }
        Kind::BlsEntry | Kind::GrubEnv | Kind::GrubDefault => {
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                let body = line.trim_end_matches('\n');
                let found = match kind {
                    Kind::BlsEntry => body
                        .strip_prefix("options")
                        .filter(|rest| rest.starts_with([' ', '\t']))
                        .map(|rest| {
                            let value = rest.trim_start_matches([' ', '\t']);
                            let start = offset + body.len() - value.len();
                            (start, offset + body.len())
                        })
                        // EL8: `options $kernelopts $tuned_params` takes grubenv's line.
                        .filter(|(s, e)| {
                            !text[*s..*e].split_whitespace().any(|w| w == "$kernelopts")
                        }),
                    Kind::GrubEnv => body
                        .strip_prefix("kernelopts=")
                        .map(|v| (offset + body.len() - v.len(), offset + body.len())),
                    _ => body.strip_prefix("GRUB_CMDLINE_LINUX=").map(|v| {
                        let start = offset + body.len() - v.len();
                        match v.chars().next() {
                            Some(q @ ('"' | '\'')) => {
                                let inner = &v[1..];
                                let close = inner.find(q).unwrap_or(inner.len());
                                (start + 1, start + 1 + close)
                            }
                            _ => {
                                let end = v.find([' ', '\t', '#']).unwrap_or(v.len());
                                (start, start + end)
                            }
                        }
                    }),
                };
                if found.is_some() {
                    return found;
                }
                offset += line.len();
            }
            None
        }
    }
}

/// The words of the file's command line (empty when it has none).
pub fn words(kind: Kind, text: &str) -> Vec<String> {
    value_range(kind, text)
        .map(|(s, e)| text[s..e].split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether the file has a command line of its own to edit.
pub fn has_cmdline(kind: Kind, text: &str) -> bool {
    value_range(kind, text).is_some()
}

/// Remove the words `remove` (whole words, each with the space before it) and
/// append the words `add` that are missing, changing nothing else: not the spacing,
/// not a comment after the quotes, not a missing final newline. A grubenv keeps its
/// 1024 bytes. `None`: nothing to change. A /etc/default/grub without the line gets
/// one at its end.
pub fn edit(kind: Kind, text: &str, add: &[String], remove: &[String]) -> Option<String> {
    let Some((start, end)) = value_range(kind, text) else {
        if kind == Kind::GrubDefault && !add.is_empty() {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("GRUB_CMDLINE_LINUX=\"{}\"\n", add.join(" ")));
            return Some(out);
        }
        return None;
    };
    let value = edit_value(&text[start..end], add, remove)?;
    let mut out = format!("{}{value}{}", &text[..start], &text[end..]);
    if kind == Kind::GrubEnv {
        out = repad_grubenv(&out, text.len())?;
    }
    Some(out)
}

/// A command line with `remove` taken out and the missing `add` appended.
fn edit_value(value: &str, add: &[String], remove: &[String]) -> Option<String> {
    let mut out = String::new();
    let mut changed = false;
    let mut rest = value;
    // Walk (whitespace, word) pairs, dropping a removed word with its whitespace.
    while !rest.is_empty() {
        let ws_len = rest.len() - rest.trim_start().len();
        let (ws, after) = rest.split_at(ws_len);
        let word_len = after.find(char::is_whitespace).unwrap_or(after.len());
        let (word, tail) = after.split_at(word_len);
        if !word.is_empty() && remove.iter().any(|r| r == word) {
            changed = true;
            // The first word keeps nothing before it; drop the space after it instead.
            if out.is_empty() && ws.is_empty() {
                rest = tail.trim_start();
                continue;
            }
        } else {
            out.push_str(ws);
            out.push_str(word);
        }
        rest = tail;
    }
    let present: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
    for a in add {
        if !present.contains(a) {
            if !out.is_empty() && !out.ends_with(char::is_whitespace) {
                out.push(' ');
            }
            out.push_str(a);
            changed = true;
        }
    }
    changed.then_some(out)
}

/// grubenv is a fixed block: keep its length by adding or taking `#` padding at the end.
fn repad_grubenv(text: &str, length: usize) -> Option<String> {
    let body = text.trim_end_matches('#');
    if body.len() > length {
        return None; // would not fit: leave the file as it is
    }
    Some(format!("{body}{}", "#".repeat(length - body.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grub_default_keeps_spacing_comment_and_missing_newline() {
        let text = "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto  rhgb quiet iommu=pt\"  # site default";
        let args = w(&["intel_iommu=on", "iommu=pt", "rd.driver.pre=vfio-pci"]);
        let new = edit(Kind::GrubDefault, text, &args, &[]).expect("changed");
        assert_eq!(
            new,
            "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto  rhgb quiet iommu=pt intel_iommu=on rd.driver.pre=vfio-pci\"  # site default"
        );
        assert_eq!(edit(Kind::GrubDefault, &new, &args, &[]), None, "no-op");
        let back = edit(
            Kind::GrubDefault,
            &new,
            &[],
            &w(&["intel_iommu=on", "rd.driver.pre=vfio-pci"]),
        )
        .expect("changed");
        assert_eq!(back, text, "removing what was added gives the text back");
        assert_eq!(
            words(Kind::GrubDefault, text),
            w(&["crashkernel=auto", "rhgb", "quiet", "iommu=pt"])
        );
    }

    #[test]
    fn whole_words_only_and_the_default_line_is_not_the_linux_line() {
        let text =
            "GRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt\"\nGRUB_CMDLINE_LINUX='iommu=ptx quiet'\n";
        let new = edit(Kind::GrubDefault, text, &w(&["iommu=pt"]), &[]).expect("changed");
        assert_eq!(
            new,
            "GRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt\"\nGRUB_CMDLINE_LINUX='iommu=ptx quiet iommu=pt'\n"
        );
        assert_eq!(
            edit(Kind::GrubDefault, "GRUB_TIMEOUT=5", &w(&["a"]), &[]).as_deref(),
            Some("GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"a\"\n")
        );
    }

    #[test]
    fn bls_entries_and_kernelopts() {
        let entry = "title CentOS\nversion 5.14.0\nlinux /vmlinuz\noptions root=/dev/vda1 ro\ngrub_users $grub_users\n";
        let new = edit(Kind::BlsEntry, entry, &w(&["iommu=pt"]), &[]).expect("changed");
        assert!(
            new.contains("\noptions root=/dev/vda1 ro iommu=pt\n"),
            "{new}"
        );
        let el8 = "title x\noptions $kernelopts $tuned_params\n";
        assert_eq!(edit(Kind::BlsEntry, el8, &w(&["iommu=pt"]), &[]), None);
        assert!(!has_cmdline(Kind::BlsEntry, el8));

        let env = format!(
            "# GRUB Environment Block\nkernelopts=root=/dev/vda1 ro \n{}",
            "#".repeat(900)
        );
        let env = format!("{env}{}", "#".repeat(1024 - env.len()));
        let new = edit(Kind::GrubEnv, &env, &w(&["iommu=pt"]), &[]).expect("changed");
        assert_eq!(new.len(), 1024);
        assert!(
            new.contains("kernelopts=root=/dev/vda1 ro iommu=pt\n"),
            "{new}"
        );
        let back = edit(Kind::GrubEnv, &new, &[], &w(&["iommu=pt"])).expect("changed");
        assert_eq!(back.len(), 1024);
        assert!(back.contains("kernelopts=root=/dev/vda1 ro\n"), "{back}");
    }

    #[test]
    fn kinds_of_paths() {
        assert_eq!(Kind::of(GRUB_DEFAULT), Some(Kind::GrubDefault));
        assert_eq!(
            Kind::of("/boot/loader/entries/x.conf"),
            Some(Kind::BlsEntry)
        );
        assert_eq!(
            Kind::of("/boot/efi/EFI/centos/grubenv"),
            Some(Kind::GrubEnv)
        );
        assert_eq!(Kind::of("/etc/modprobe.d/x.conf"), None);
    }
}
