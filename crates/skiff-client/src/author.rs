//! Who this process runs as, for the requests that make releases ([`Author`]): the CLI
//! sends it with `up`, `scale` and `rollback`; the server names itself with it when it
//! rolls back on its own.

use std::os::unix::fs::MetadataExt;

use skiff_model::Author;

/// `$USER`, else the name of this process's uid (from `/etc/passwd`), else the uid as a
/// number; and [`host_name`].
pub fn local() -> Author {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            let uid = std::fs::metadata("/proc/self").ok()?.uid();
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            Some(user_of(&passwd, uid).unwrap_or_else(|| uid.to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    Author {
        user,
        host: host_name(),
    }
}

/// This machine's host name (the kernel's), else `unknown`.
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The name of `uid` in a passwd file's text (`name:x:uid:gid:…` lines).
fn user_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_named_by_its_passwd_line() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_of(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_of(passwd, 42), None);
    }

    #[test]
    fn this_process_has_a_user_and_a_host() {
        let a = local();
        assert!(!a.user.is_empty() && !a.host.is_empty(), "{a}");
        assert!(!a.host.contains('\n'));
    }
}
