//! Named variants: a backend plus feature switches (`uring-no-bufring`,
//! `epoll-no-coalesce`), so the server, the sweep, the benches and the tests name one
//! feature turned off the same way. Made from [`BACKENDS`] and [`SWITCHES`] alone.

use std::fmt;

use crate::config::{ServerConfig, Switch, SWITCHES};
use crate::server::{Registered, BACKENDS};

/// A backend with its switches, named as in reports.
#[derive(Clone)]
pub struct Variant {
    /// The canonical name (`uring-no-bufring`).
    pub name: String,
    pub backend: &'static Registered,
    pub switches: Vec<&'static Switch>,
}

impl fmt::Debug for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq for Variant {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Variant {
    /// Parses `BACKEND` or `BACKEND-SWITCH[-SWITCH...]` (`_` works as well as `-`).
    pub fn parse(name: &str) -> Result<Variant, String> {
        let canon = name.replace('_', "-");
        let unknown = || format!("unknown backend '{name}' (expected one of: {})", Variant::names().join(", "));
        let backend = BACKENDS
            .iter()
            .filter(|b| canon == b.name || canon.starts_with(&format!("{}-", b.name)))
            .max_by_key(|b| b.name.len())
            .ok_or_else(unknown)?;
        let mut rest = canon[backend.name.len()..].trim_start_matches('-');
        let mut switches = Vec::new();
        while !rest.is_empty() {
            let s = SWITCHES
                .iter()
                .filter(|s| s.backend.is_none_or(|b| b == backend.name))
                .find(|s| rest == s.name || rest.starts_with(&format!("{}-", s.name)))
                .ok_or_else(|| format!("unknown switch '{rest}' in backend '{name}' ({})", unknown()))?;
            switches.push(s);
            rest = rest[s.name.len()..].trim_start_matches('-');
        }
        Ok(Variant { name: canon, backend, switches })
    }

    /// Sets this variant's switches in `cfg`.
    pub fn apply(&self, cfg: &mut ServerConfig) {
        for s in &self.switches {
            (s.apply)(cfg);
        }
    }

    /// A configuration with this variant's switches set.
    pub fn config(&self) -> ServerConfig {
        let mut cfg = ServerConfig::default();
        self.apply(&mut cfg);
        cfg
    }

    /// Every backend, and every backend with one of its switches.
    pub fn names() -> Vec<String> {
        let mut v = Vec::new();
        for b in BACKENDS {
            v.push(b.name.to_string());
        }
        for b in BACKENDS {
            for s in SWITCHES.iter().filter(|s| s.backend.is_none_or(|x| x == b.name)) {
                v.push(format!("{}-{}", b.name, s.name));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_to_its_switches() {
        for n in Variant::names() {
            let v = Variant::parse(&n).unwrap();
            assert_eq!(v.name, n);
            assert_eq!(v.switches.len(), usize::from(n.contains('-')));
        }
        let v = Variant::parse("uring_no_bufring").unwrap();
        let cfg = v.config();
        assert_eq!((v.backend.name, cfg.uring.bufring, cfg.uring.multishot), ("uring", false, true));
        let both = Variant::parse("uring-no-bufring-no-coalesce").unwrap().config();
        assert_eq!((both.uring.bufring, both.coalesce_us), (false, 0));
        assert!(Variant::parse("kqueue").unwrap_err().contains("unknown backend"));
        assert!(Variant::parse("epoll-sqpoll").unwrap_err().contains("unknown switch"));
    }
}
