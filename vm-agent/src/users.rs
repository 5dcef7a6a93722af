//! `users`: whom the agent's children run as.
//!
//! The image names an unprivileged user (`user = "user"` in its `agent.toml`, `--user` on the
//! command line). Every `exec` and PTY program runs as that user unless the call names another,
//! so a CLI, or a page that turned it hostile, has that user's rights and no more: it cannot
//! read the agent's memory, replace the agent's binary, touch another home's files or reach the
//! agent's private sockets. The agent alone stays root. An agent that is not root (development,
//! tests) runs programs as itself, and refuses a call, or a default, naming another user.

use std::path::PathBuf;

use protocol::{ErrorBody, ErrorCode};

/// The user a program runs as, looked up in the guest's passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Numeric id of its primary group (its only group: no supplementary ones are kept).
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Why a program cannot run as the user a call asked for.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user in the guest.
    #[error("no user {0:?} in the guest")]
    Unknown(String),
    /// The passwd lookup failed.
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        /// The user asked for.
        name: String,
        /// What the lookup said.
        source: nix::Error,
    },
    /// Only root can start a program as another user.
    #[error("the agent runs as uid {agent}, not root: it cannot run a program as {name:?}")]
    NotRoot {
        /// The user asked for.
        name: String,
        /// The agent's own uid.
        agent: u32,
    },
}

impl UserError {
    /// The error answer a call gets.
    pub fn to_error_body(&self) -> ErrorBody {
        let code = match self {
            UserError::Unknown(_) => ErrorCode::NotFound,
            UserError::Lookup { .. } => ErrorCode::Io,
            UserError::NotRoot { .. } => ErrorCode::Forbidden,
        };
        ErrorBody::new(code, self.to_string())
    }
}

impl RunAs {
    /// `name` from the guest's passwd.
    pub fn lookup(name: &str) -> Result<RunAs, UserError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| UserError::Lookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| UserError::Unknown(name.to_owned()))?;
        Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }

    /// The variables that say who the program is: `HOME`, `USER`, `LOGNAME`.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("HOME", self.home.to_string_lossy().into_owned()),
            ("USER", self.name.clone()),
            ("LOGNAME", self.name.clone()),
        ]
    }

    /// Whether running as this user means changing from the agent's own.
    pub fn needs_switch(&self) -> bool {
        self.uid != rustix::process::geteuid().as_raw()
            || self.gid != rustix::process::getegid().as_raw()
    }

    /// Becomes this user: its group as the only group, then its gid, then its uid (in that
    /// order: after `setuid` the others are no longer allowed). Makes only async-signal-safe
    /// system calls, so it may run between `fork` and `exec`.
    pub fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
        let groups = [gid];
        // SAFETY: plain system calls on integers and a local array that outlives the call.
        let failed = unsafe {
            libc::setgroups(1, groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Whom programs run as: the configured default, or what a call asks for.
#[derive(Debug, Clone, Default)]
pub struct Users {
    default: Option<String>,
}

impl Users {
    /// Programs run as `default` unless a call names another user; as the agent itself when
    /// `None`.
    pub fn new(default: Option<String>) -> Users {
        Users { default }
    }

    /// The user a call runs its program as: `requested`, else the default; `None` when neither
    /// names one (the program runs as the agent, with the agent's environment).
    pub fn resolve(&self, requested: Option<&str>) -> Result<Option<RunAs>, UserError> {
        let Some(name) = requested.or(self.default.as_deref()) else {
            return Ok(None);
        };
        let user = RunAs::lookup(name)?;
        let agent = rustix::process::geteuid().as_raw();
        if user.needs_switch() && agent != 0 {
            return Err(UserError::NotRoot {
                name: name.to_owned(),
                agent,
            });
        }
        Ok(Some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_default_and_no_request_is_the_agent_itself() {
        assert_eq!(Users::new(None).resolve(None).expect("resolves"), None);
    }

    #[test]
    fn the_agents_own_user_needs_no_switch_but_gets_its_environment() {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .expect("lookup")
            .expect("this process's user is in passwd");
        let users = Users::new(Some(me.name.clone()));
        for asked in [None, Some(me.name.as_str())] {
            let user = users.resolve(asked).expect("resolves").expect("a user");
            assert!(!user.needs_switch());
            assert_eq!(user.env()[1], ("USER", me.name.clone()));
        }
    }

    #[test]
    fn an_unknown_user_is_not_found() {
        let e = Users::new(Some("no-such-user-here".into()))
            .resolve(None)
            .expect_err("refused");
        assert_eq!(e.to_error_body().code, ErrorCode::NotFound);
        assert!(e.to_string().contains("no-such-user-here"), "{e}");
    }

    #[test]
    fn another_user_needs_root() {
        let users = Users::new(None);
        let root = rustix::process::geteuid().is_root();
        let target = if root { "nobody" } else { "root" };
        match users.resolve(Some(target)) {
            Ok(Some(user)) => {
                assert!(root && user.needs_switch(), "only root switches");
                assert_eq!(user.name, target);
                assert_eq!(
                    user.env()[0],
                    ("HOME", user.home.to_string_lossy().into_owned())
                );
            }
            Err(e) => {
                assert!(!root, "root may run as {target}: {e}");
                assert_eq!(e.to_error_body().code, ErrorCode::Forbidden);
            }
            Ok(None) => panic!("{target} was asked for by name"),
        }
    }
}
