//! Resolving a Docker-style user spec (`name|uid[:group|gid]`) against the image's
//! `/etc/passwd` and `/etc/group`. Pure: the caller reads the files (inside the container, after
//! pivot_root, so an image's symlinks cannot point at the host's files).
//!
//! Rules (Docker's / runc's):
//! - `""` is root (uid 0).
//! - A numeric uid needs no passwd entry; without one the primary gid is 0 and HOME is `/`.
//! - A name must have a passwd entry.
//! - `:group` overrides the primary gid; a group name must have a group entry, a numeric gid
//!   needs none.
//! - Supplementary groups: every group that lists the user's name as a member (none for a uid
//!   without a passwd entry).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The credentials a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`setgroups`), possibly empty.
    pub groups: Vec<u32>,
    /// From the passwd entry, else `/`.
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// The spec is malformed (e.g. empty user before `:`).
    Invalid {
        spec: String,
        reason: String,
    },
    UnknownUser {
        name: String,
        have_file: bool,
    },
    UnknownGroup {
        name: String,
        have_file: bool,
    },
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::Invalid { spec, reason } => write!(f, "invalid user {spec:?}: {reason}"),
            UserError::UnknownUser {
                name,
                have_file: true,
            } => write!(
                f,
                "unknown user {name:?}: no matching entry in the image's /etc/passwd \
                 (use a numeric uid, or add the user to the image)"
            ),
            UserError::UnknownUser {
                name,
                have_file: false,
            } => write!(
                f,
                "unknown user {name:?}: the image has no /etc/passwd (use a numeric uid)"
            ),
            UserError::UnknownGroup {
                name,
                have_file: true,
            } => write!(
                f,
                "unknown group {name:?}: no matching entry in the image's /etc/group \
                 (use a numeric gid, or add the group to the image)"
            ),
            UserError::UnknownGroup {
                name,
                have_file: false,
            } => write!(
                f,
                "unknown group {name:?}: the image has no /etc/group (use a numeric gid)"
            ),
        }
    }
}

impl std::error::Error for UserError {}

/// Parses an id as the kernel accepts it: u32, but not `u32::MAX` (that is -1, "no change").
fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `/etc/passwd`. Comments, blank and malformed lines are skipped (as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: parse_id(f[2])?,
                gid: parse_id(f[3])?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
                shell: f.get(6).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses `/etc/group`. Comments, blank and malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: parse_id(f[2])?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Checks the syntax of a user spec without any files (for early validation).
pub fn validate_spec(spec: &str) -> Result<(), UserError> {
    let invalid = |reason: &str| UserError::Invalid {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    if spec.is_empty() {
        return Ok(());
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(invalid(
            "the user part is empty (expected name|uid[:group|gid])",
        ));
    }
    if group == Some("") {
        return Err(invalid("the group part after ':' is empty"));
    }
    for part in std::iter::once(user).chain(group) {
        if part.contains(':') || part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("expected name|uid[:group|gid]"));
        }
        if is_numeric(part) && parse_id(part).is_none() {
            return Err(invalid("id out of range (0..=4294967294)"));
        }
    }
    Ok(())
}

/// Resolves `spec` against the contents of the image's passwd and group files (`None` when the
/// file does not exist).
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    validate_spec(spec)?;
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };

    let entry = if is_numeric(user_part) {
        let uid = parse_id(user_part).ok_or_else(|| UserError::Invalid {
            spec: spec.to_string(),
            reason: "uid out of range".into(),
        })?;
        users
            .iter()
            .find(|u| u.uid == uid)
            .cloned()
            .map(Ok)
            .unwrap_or(Err(uid))
    } else {
        match users.iter().find(|u| u.name == user_part) {
            Some(u) => Ok(u.clone()),
            None => {
                return Err(UserError::UnknownUser {
                    name: user_part.to_string(),
                    have_file: passwd.is_some(),
                })
            }
        }
    };

    let (uid, mut gid, home, name) = match entry {
        Ok(u) => {
            let home = if u.home.is_empty() {
                "/".to_string()
            } else {
                u.home
            };
            (u.uid, u.gid, home, Some(u.name))
        }
        Err(uid) => (uid, 0, "/".to_string(), None),
    };

    if let Some(g) = group_part {
        gid = if is_numeric(g) {
            parse_id(g).ok_or_else(|| UserError::Invalid {
                spec: spec.to_string(),
                reason: "gid out of range".into(),
            })?
        } else {
            groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: g.to_string(),
                    have_file: group.is_some(),
                })?
        };
    }

    let mut supplementary: Vec<u32> = match &name {
        Some(n) => groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == n))
            .map(|g| g.gid)
            .filter(|&g| g != gid)
            .collect(),
        None => Vec::new(),
    };
    supplementary.sort_unstable();
    supplementary.dedup();

    Ok(ExecUser {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
bad:x:notanumber:1::/:/bin/sh
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
nohome:x:1001:1001::
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
audio:x:29:app, daemon
app:x:1000:
nogroup:x:65534:
junk
";

    #[test]
    fn parses_passwd_and_skips_junk() {
        let users = parse_passwd(PASSWD);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "app", "nobody", "nohome"]);
        assert_eq!(users[2].home, "/home/app");
        assert_eq!(users[2].uid, 1000);
        assert_eq!(users[4].home, "");
    }

    #[test]
    fn parses_group_members() {
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 5);
        assert_eq!(groups[1].members, ["root", "app"]);
        assert_eq!(groups[2].members, ["app", "daemon"]);
        assert!(groups[0].members.is_empty());
    }

    #[test]
    fn empty_spec_is_root_with_groups() {
        let u = resolve_user("", Some(PASSWD), Some(GROUP)).expect("root");
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.home, "/root");
        assert_eq!(u.groups, [10]);
        // Without any files, root still works.
        let u = resolve_user("", None, None).expect("root");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
        assert!(u.groups.is_empty());
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let u = resolve_user("app", Some(PASSWD), Some(GROUP)).expect("app");
        assert_eq!(
            u,
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![10, 29],
                home: "/home/app".into()
            }
        );
        let u = resolve_user("nobody", Some(PASSWD), Some(GROUP)).expect("nobody");
        assert_eq!((u.uid, u.gid), (65534, 65534));
        assert!(u.groups.is_empty());
        let u = resolve_user("nohome", Some(PASSWD), None).expect("nohome");
        assert_eq!(u.home, "/");
    }

    #[test]
    fn numeric_ids_need_no_files() {
        let u = resolve_user("12345", None, None).expect("uid");
        assert_eq!(
            u,
            ExecUser {
                uid: 12345,
                gid: 0,
                groups: vec![],
                home: "/".into()
            }
        );
        let u = resolve_user("12345:54321", None, None).expect("uid:gid");
        assert_eq!((u.uid, u.gid), (12345, 54321));
        // A numeric uid that has an entry takes its gid and home.
        let u = resolve_user("1000", Some(PASSWD), Some(GROUP)).expect("uid 1000");
        assert_eq!((u.gid, u.home.as_str()), (1000, "/home/app"));
        assert_eq!(u.groups, [10, 29]);
    }

    #[test]
    fn group_override() {
        let u = resolve_user("app:audio", Some(PASSWD), Some(GROUP)).expect("app:audio");
        assert_eq!(u.gid, 29);
        assert_eq!(u.groups, [10]);
        let u = resolve_user("nobody:0", Some(PASSWD), Some(GROUP)).expect("nobody:0");
        assert_eq!((u.uid, u.gid), (65534, 0));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = resolve_user("ghost", Some(PASSWD), Some(GROUP)).expect_err("ghost");
        assert_eq!(
            e,
            UserError::UnknownUser {
                name: "ghost".into(),
                have_file: true
            }
        );
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
        let e = resolve_user("ghost", None, None).expect_err("no passwd");
        assert!(e.to_string().contains("has no /etc/passwd"), "{e}");
        let e = resolve_user("app:ghosts", Some(PASSWD), Some(GROUP)).expect_err("group");
        assert!(matches!(e, UserError::UnknownGroup { .. }));
        assert!(e.to_string().contains("unknown group \"ghosts\""), "{e}");
    }

    #[test]
    fn malformed_specs() {
        for bad in [":0", "0:", "a b", "4294967295", "1:4294967296", "a:b:c"] {
            assert!(
                matches!(validate_spec(bad), Err(UserError::Invalid { .. })),
                "{bad:?} should be invalid"
            );
            assert!(
                resolve_user(bad, Some(PASSWD), Some(GROUP)).is_err(),
                "{bad:?}"
            );
        }
        for good in ["", "root", "0", "app:audio", "4294967294"] {
            validate_spec(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }
}
