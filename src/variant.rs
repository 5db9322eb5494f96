//! Named backend variants: a backend plus switches, so the matrix, the benches and the
//! tests can measure or exercise one feature turned off (`uring-no-bufring`) by name.

use ringbench_backends::{BackendKind, UringOptions};

/// A backend with its feature switches, named as in reports (`uring-no-multishot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub kind: BackendKind,
    pub uring: UringOptions,
    /// Event coalescing off (`-no-coalesce`).
    pub no_coalesce: bool,
    /// The same switches as `ringbench server` flags.
    pub flags: Vec<&'static str>,
}

/// Every variant name that [`Variant::parse`] accepts.
pub const NAMES: &[&str] = &[
    "epoll",
    "uring",
    "uring-no-multishot",
    "uring-no-bufring",
    "uring-no-defer-taskrun",
    "uring-sqpoll",
    "epoll-no-coalesce",
    "uring-no-coalesce",
];

impl Variant {
    /// Parses `epoll`, `uring` or `BACKEND-SWITCH` (`_` works as well as `-`).
    pub fn parse(name: &str) -> Result<Variant, String> {
        let canon = name.replace('_', "-");
        if !NAMES.contains(&canon.as_str()) {
            return Err(format!("unknown backend '{name}' (expected one of: {})", NAMES.join(", ")));
        }
        let (base, switch) = canon.split_once('-').unwrap_or((canon.as_str(), ""));
        let kind: BackendKind = base.parse()?;
        let flag: Option<&'static str> = match switch {
            "" => None,
            "no-multishot" => Some("--uring-no-multishot"),
            "no-bufring" => Some("--uring-no-bufring"),
            "no-defer-taskrun" => Some("--uring-no-defer-taskrun"),
            "sqpoll" => Some("--sqpoll"),
            "no-coalesce" => Some("--coalesce-us=0"),
            other => return Err(format!("unknown switch '{other}' in backend '{name}'")),
        };
        let flags: Vec<&'static str> = flag.into_iter().collect();
        let uring = UringOptions {
            multishot: switch != "no-multishot",
            bufring: switch != "no-bufring",
            defer_taskrun: switch != "no-defer-taskrun",
            sqpoll: switch == "sqpoll",
            ..UringOptions::default()
        };
        let no_coalesce = switch == "no-coalesce";
        Ok(Variant { name: canon.clone(), kind, uring, no_coalesce, flags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_with_its_switch() {
        for n in NAMES {
            let v = Variant::parse(n).unwrap();
            assert_eq!(&v.name, n);
            assert_eq!(v.flags.len(), usize::from(n.contains('-')));
        }
        let v = Variant::parse("uring_no_bufring").unwrap();
        assert_eq!((v.kind, v.uring.bufring, v.uring.multishot), (BackendKind::Uring, false, true));
        assert!(Variant::parse("kqueue").unwrap_err().contains("unknown backend"));
    }
}
