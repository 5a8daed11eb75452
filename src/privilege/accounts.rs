//! Users and groups from `/etc/passwd` and `/etc/group`, read directly: a
//! static binary has no NSS, and the appliance's accounts are local.
//!
//! Sans-IO: the parsers take the file text. Malformed lines are skipped (as
//! glibc does), never fatal; a name must match exactly.

/// A `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// A `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Numeric group id.
    pub gid: u32,
}

/// Longest line considered; longer ones are skipped.
const MAX_LINE: usize = 4096;

fn fields(line: &str) -> Option<Vec<&str>> {
    if line.len() > MAX_LINE || line.starts_with('#') || line.starts_with('+') {
        return None;
    }
    Some(line.split(':').collect())
}

/// Find `name` in passwd text.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|line| {
        let f = fields(line)?;
        if f.len() != 7 || f[0] != name {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// Find `name` in group text.
pub fn find_group(group: &str, name: &str) -> Option<Group> {
    group.lines().find_map(|line| {
        let f = fields(line)?;
        if f.len() != 4 || f[0] != name {
            return None;
        }
        Some(Group {
            name: f[0].to_string(),
            gid: f[2].parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        broken line\n\
        voxgate:x:998:997:voxgate gateway:/var/lib/voxgate:/usr/sbin/nologin\n\
        +nisuser::::::\n\
        big:x:99999999999:1:x:/:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\naudio:x:29:pulse\ntss:x:120:\nbad:x:notanumber:\n";

    #[test]
    fn finds_users_and_groups() {
        let u = find_user(PASSWD, "voxgate").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (998, 997, "/var/lib/voxgate")
        );
        assert_eq!(find_user(PASSWD, "nobody").unwrap().uid, 65534);
        assert_eq!(find_user(PASSWD, "root").unwrap().uid, 0);
        assert_eq!(find_group(GROUP, "audio").unwrap().gid, 29);
        assert_eq!(find_group(GROUP, "tss").unwrap().gid, 120);
    }

    #[test]
    fn skips_malformed_and_partial_matches() {
        assert_eq!(find_user(PASSWD, "vox"), None);
        assert_eq!(find_user(PASSWD, "big"), None); // uid overflows u32
        assert_eq!(find_user(PASSWD, "+nisuser"), None);
        assert_eq!(find_user(PASSWD, "broken line"), None);
        assert_eq!(find_group(GROUP, "bad"), None);
        assert_eq!(find_user("", "root"), None);
        assert_eq!(find_user(&"x".repeat(10_000), "x"), None);
    }
}
