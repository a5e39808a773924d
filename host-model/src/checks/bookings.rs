//! The booking check: whether the domain's project holds bookings for its GPUs now.

use std::path::Path;

use super::*;

/// Whether the domain's project holds bookings for its GPUs now (`[bookings]`): a
/// `booking` finding per GPU that none covers, FAIL in enforce mode and WARN in warn
/// mode; a broken bookings file is one finding naming it. Domains without Nova's
/// metadata are not subject to bookings (`None`, and the caller says so).
pub fn check_bookings(
    domain: &Domain,
    host: &HostPaths,
    config: &BookingsConfig,
    bookings_file: &Path,
    bookings_index: Option<&Path>,
    hostname: &str,
    now: jiff::Timestamp,
) -> Option<Vec<Finding>> {
    if config.mode == BookingsMode::Off {
        return Some(Vec::new());
    }
    let nova = domain.nova.as_ref()?;
    let severity = if config.mode == BookingsMode::Enforce {
        Severity::Fail
    } else {
        Severity::Warn
    };
    let gpus = crate::ledger::gpus_of(domain, &host.sysfs, None);
    if gpus.is_empty() {
        return Some(Vec::new());
    }
    // Only this project's (and user's) bookings are checked and kept: the file may
    // hold thousands of other projects'.
    let names: Vec<&str> = [&nova.project_id, &nova.project, &nova.user_id, &nova.user]
        .into_iter()
        .filter_map(|n| n.as_deref())
        .collect();
    let bookings = match crate::bookings::load_matching(bookings_file, &names, bookings_index) {
        Ok(b) => b,
        Err(e) => {
            return Some(vec![Finding::problem(
                severity,
                "booking",
                None,
                format!("the bookings file cannot be used, so no GPU start can be checked: {e}"),
                format!(
                    "correct {} (or write it again: `gpu-passthrough bookings import`){}",
                    bookings_file.display(),
                    if severity == Severity::Fail {
                        ", or set [bookings] mode = \"warn\""
                    } else {
                        ""
                    }
                ),
            )])
        }
    };
    let running = running_domains(&host.libvirt_run);
    let others: Vec<(String, NovaInstance, Vec<crate::ledger::GpuRef>)> = running
        .domains
        .iter()
        .filter_map(|d| {
            let n = d.nova.clone()?;
            Some((
                d.name.clone(),
                n,
                crate::ledger::gpus_of(d, &host.sysfs, None),
            ))
        })
        .collect();
    let holders: Vec<Holder<'_>> = others
        .iter()
        .map(|(name, n, g)| Holder {
            name,
            nova: n,
            gpus: g,
        })
        .collect();
    let want = Holder {
        name: &domain.name,
        nova,
        gpus: &gpus,
    };
    let project = nova
        .project
        .as_deref()
        .or(nova.project_id.as_deref())
        .unwrap_or("(unnamed)");
    Some(
        crate::bookings::uncovered(&bookings, hostname, config.match_user, now, &holders, &want)
            .into_iter()
            .map(|u| {
                Finding::problem(
                    severity,
                    "booking",
                    u.gpu.address.parse().ok(),
                    format!(
                        "project '{project}' has no booking that covers this GPU now: {}",
                        u.why
                    ),
                    match u.next {
                        Some(next) => format!(
                            "start it within a booking of the project; its next one that would \
                             cover it: {next}"
                        ),
                        None => "book the GPU for the project (the site's calendar), or ask the \
                                 cloud administrators"
                            .to_owned(),
                    },
                )
            })
            .collect(),
    )
}
