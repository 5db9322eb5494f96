//! Where a sweep's clients run: this machine (`local`), a network namespace of this machine
//! reached over a veth pair (`netns:NAME[:rate=100mbit]`), or another machine over ssh
//! (`ssh:[user@]host`).
//!
//! Namespaces leave loopback: on loopback the server's `send` runs the client's TCP input
//! and wakes its thread inline, while a veth pair hands each packet to the other side's
//! backlog, as a NIC's driver would. [`Network`] builds what the hosts need with `ip` and
//! `tc` — a namespace per host, a veth pair to it (addresses from 198.18.0.0/15, the range
//! reserved for network benchmarks, only on interfaces it created), a `tbf` qdisc for a
//! rate — and removes all of it when dropped, so an error, a panic or a Ctrl-C that ends
//! the sweep leaves nothing behind.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// One client host of a sweep.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum HostSpec {
    /// This machine, this namespace: the default.
    Local,
    /// A namespace of this machine with a veth link to the server.
    Netns(NetnsSpec),
    /// Another machine: `ringbench client` runs there through ssh.
    Ssh { dest: String },
}

/// `netns:NAME[:rate=R][:delay=D][:loss=L]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetnsSpec {
    pub name: String,
    /// A `tbf` rate for both directions of the link (`100mbit`, `1gbit`, …).
    pub rate: Option<String>,
    /// netem's delay and loss, where the kernel has `sch_netem`.
    pub delay: Option<String>,
    pub loss: Option<String>,
}

impl HostSpec {
    /// Parses one SPEC of `--client-hosts`.
    pub fn parse(s: &str) -> Result<HostSpec, String> {
        if s == "local" {
            return Ok(HostSpec::Local);
        }
        if let Some(dest) = s.strip_prefix("ssh:") {
            let host = dest.rsplit('@').next().unwrap_or("");
            if host.is_empty() || dest.contains(char::is_whitespace) {
                return Err(format!("'{s}': expected ssh:[user@]host"));
            }
            return Ok(HostSpec::Ssh { dest: dest.to_string() });
        }
        let Some(rest) = s.strip_prefix("netns:") else {
            return Err(format!("'{s}': expected local, netns:NAME[:rate=100mbit] or ssh:[user@]host"));
        };
        let mut parts = rest.split(':');
        let name = parts.next().unwrap_or("");
        if name.is_empty() || name.len() > 16 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("'{s}': a namespace name is 1-16 letters, digits or '-'"));
        }
        let mut spec = NetnsSpec { name: name.to_string(), rate: None, delay: None, loss: None };
        for opt in parts {
            let (k, v) = opt.split_once('=').ok_or_else(|| format!("'{s}': '{opt}' is not KEY=VALUE"))?;
            let ok = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '%');
            if !ok {
                return Err(format!("'{s}': '{v}' is not a value tc takes"));
            }
            let slot = match k {
                "rate" => &mut spec.rate,
                "delay" => &mut spec.delay,
                "loss" => &mut spec.loss,
                _ => return Err(format!("'{s}': unknown option '{k}' (rate=, delay=, loss=)")),
            };
            *slot = Some(v.to_string());
        }
        Ok(HostSpec::Netns(spec))
    }

    /// Its name in raw file names and reports: `local`, the namespace's name, or the host.
    pub fn label(&self) -> String {
        match self {
            HostSpec::Local => "local".into(),
            HostSpec::Netns(n) => n.name.clone(),
            HostSpec::Ssh { dest } => dest.rsplit('@').next().unwrap_or(dest).to_string(),
        }
    }
}

/// Parses `--client-hosts`: a comma-separated list whose labels are all different.
pub fn parse_list(s: &str) -> Result<Vec<HostSpec>, String> {
    let hosts: Vec<HostSpec> = s.split(',').map(str::trim).map(HostSpec::parse).collect::<Result<_, _>>()?;
    let mut labels: Vec<String> = hosts.iter().map(HostSpec::label).collect();
    labels.sort();
    if let Some(w) = labels.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("two client hosts are called '{}'", w[0]));
    }
    Ok(hosts)
}

/// The namespaces, links and qdiscs a sweep's hosts need, removed when dropped.
#[derive(Debug, Default)]
pub struct Network {
    /// Every namespace created, in order; deleting one deletes the links inside it.
    namespaces: Vec<String>,
    /// Links created in this namespace (gone with their peers, deleted again to be sure).
    links: Vec<String>,
    server_ns: Option<String>,
    /// Per host of the list: the namespace its client runs in.
    host_ns: Vec<Option<String>>,
    /// The server side of the first link: where the server listens.
    server_ip: Option<Ipv4Addr>,
    /// The /24s of 198.18.0.0/15 taken here (by a live sweep, or by this one).
    taken: std::collections::BTreeSet<u16>,
}

impl Network {
    /// Builds what `hosts` need; with `server_netns`, the server gets a namespace too and
    /// every link ends there. Nothing is made for local and ssh hosts alone.
    pub fn build(hosts: &[HostSpec], server_netns: bool) -> anyhow::Result<Network> {
        let mut net = Network::default();
        let netns: Vec<&NetnsSpec> = hosts
            .iter()
            .filter_map(|h| match h {
                HostSpec::Netns(n) => Some(n),
                _ => None,
            })
            .collect();
        if netns.is_empty() && !server_netns {
            net.host_ns = vec![None; hosts.len()];
            return Ok(net);
        }
        if server_netns && hosts.iter().any(|h| !matches!(h, HostSpec::Netns(_))) {
            bail!("--server-netns needs every client host to be netns:NAME: local and ssh hosts cannot reach a server in its own namespace");
        }
        remove_stale();
        net.taken = subnets_in_use();
        let pid = std::process::id();
        if server_netns {
            let ns = format!("ringbench-{pid}-server");
            net.add_namespace(&ns)?;
            net.server_ns = Some(ns);
        }
        let mut link = 0u16;
        for h in hosts {
            let HostSpec::Netns(spec) = h else {
                net.host_ns.push(None);
                continue;
            };
            let ns = format!("ringbench-{pid}-{}", spec.name);
            net.add_namespace(&ns)?;
            net.link(&ns, link, spec)?;
            net.host_ns.push(Some(ns));
            link += 1;
        }
        Ok(net)
    }

    /// Creates namespace `ns` with its loopback up. The first `ip netns add` also tells
    /// whether we may: without CAP_NET_ADMIN it fails, and the error says so.
    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns]).map_err(|e| {
            anyhow::anyhow!("netns client hosts need CAP_NET_ADMIN (run as root) and iproute2's `ip`: {e:#}")
        })?;
        self.namespaces.push(ns.to_string());
        crate::guard::netns(ns);
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Link `i` between the server's namespace (this one, or the server's own) and the
    /// client namespace `ns`, on a /24 of 198.18.0.0/15 that no interface here uses (so two
    /// sweeps at once never share addresses): .1 on the server side, .2 on the client
    /// side, the client's default route through it, and `spec`'s shaping on both ends.
    fn link(&mut self, ns: &str, i: u16, spec: &NetnsSpec) -> anyhow::Result<()> {
        let pid = std::process::id() % 10_000_000;
        let (near, far) = (format!("rb{pid}s{i}"), format!("rb{pid}c{i}"));
        let net = (0..SUBNETS)
            .find(|k| !self.taken.contains(k))
            .ok_or_else(|| anyhow::anyhow!("every /24 of 198.18.0.0/15 is in use here"))?;
        self.taken.insert(net);
        let (b, c) = (18 + net / 256, net % 256);
        ip(&["link", "add", &near, "type", "veth", "peer", "name", &far, "netns", ns])?;
        self.links.push(near.clone());
        crate::guard::link(&near);
        // The server side: here, or moved into the server's namespace.
        let side: Vec<&str> = match &self.server_ns {
            Some(s) => {
                ip(&["link", "set", &near, "netns", s])?;
                vec!["-n", s]
            }
            None => Vec::new(),
        };
        let (server_ip, client_ip) = (format!("198.{b}.{c}.1"), format!("198.{b}.{c}.2"));
        self.server_ip.get_or_insert(Ipv4Addr::new(198, b as u8, c as u8, 1));
        let with = |args: &[&str]| -> Vec<String> { side.iter().chain(args).map(|s| s.to_string()).collect() };
        ip_owned(&with(&["addr", "add", &format!("{server_ip}/24"), "dev", &near]))?;
        ip_owned(&with(&["link", "set", &near, "up"]))?;
        ip(&["-n", ns, "addr", "add", &format!("{client_ip}/24"), "dev", &far])?;
        ip(&["-n", ns, "link", "set", &far, "up"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &server_ip])?;
        let client_side = ["-n".to_string(), ns.to_string()];
        let server_side: Vec<String> = side.iter().map(|s| s.to_string()).collect();
        shape(&client_side, &far, spec)?;
        shape(&server_side, &near, spec)
    }

    /// The address the server binds to: the first link's server side, or `None` when no
    /// link was made (loopback and ssh hosts).
    pub fn server_ip(&self) -> Option<Ipv4Addr> {
        self.server_ip
    }

    /// The words to run the server with: `ip netns exec NS` with `--server-netns`.
    pub fn server_prefix(&self) -> Vec<String> {
        self.server_ns.as_deref().map(exec_prefix).unwrap_or_default()
    }

    /// The words to run host `i`'s client with (its namespace's `ip netns exec`).
    pub fn host_prefix(&self, i: usize) -> Vec<String> {
        self.host_ns.get(i).cloned().flatten().as_deref().map(exec_prefix).unwrap_or_default()
    }

    /// Removes everything made, in reverse; safe to call twice. Returns what could not be
    /// removed.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        // Links first: deleting a veth end takes its namespaced peer with it at once, while
        // a deleted namespace's devices are freed later by the kernel's cleanup work (so a
        // link could outlive the sweep by a moment and hold its subnet).
        for l in self.links.drain(..) {
            if std::path::Path::new(&format!("/sys/class/net/{l}")).exists() {
                if let Err(e) = ip(&["link", "del", &l]) {
                    left.push(format!("link {l}: {e:#}"));
                }
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                left.push(format!("namespace {ns}: {e:#}"));
            }
        }
        left
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for why in self.teardown() {
            eprintln!("ringbench: could not remove {why}");
        }
    }
}

/// The /24s in 198.18.0.0/15 (198.18.0.0 to 198.19.255.0).
const SUBNETS: u16 = 512;

/// The /24s of 198.18.0.0/15 an interface of this namespace has an address in.
fn subnets_in_use() -> std::collections::BTreeSet<u16> {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter_map(|a| {
            let [x, b, c, _] = a.octets();
            (x == 198 && (b == 18 || b == 19)).then(|| u16::from(b - 18) * 256 + u16::from(c))
        })
        .collect()
}

/// Namespaces (`ringbench-PID-NAME`) and links (`rbPIDs…`) of earlier sweeps whose process
/// is gone — killed before it could remove them — are removed, one line each: left in
/// place, their addresses would answer for this sweep's.
fn remove_stale() {
    let list = |args: &[&str]| -> String {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let gone = |pid: &str| pid.parse::<u32>().is_ok_and(|p| !crate::guard::ringbench_alive(p));
    // Links first, for the reason teardown gives.
    for l in list(&["-o", "link", "show"]).lines() {
        let Some(name) = l.split(": ").nth(1).and_then(|n| n.split('@').next()) else { continue };
        let Some(rest) = name.strip_prefix("rb") else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let kind_ok = rest[pid.len()..].starts_with(['s', 'c']);
        if !pid.is_empty() && kind_ok && gone(&pid) && ip(&["link", "del", name]).is_ok() {
            eprintln!("ringbench matrix: removed link {name}, left by an earlier sweep (process {pid} is gone)");
        }
    }
    for name in list(&["netns", "list"]).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix("ringbench-").and_then(|r| r.split('-').next()) else { continue };
        if gone(pid) && ip(&["netns", "del", name]).is_ok() {
            eprintln!("ringbench matrix: removed namespace {name}, left by an earlier sweep (process {pid} is gone)");
        }
    }
}

fn exec_prefix(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(String::from).to_vec()
}

/// A rate (`tbf`), or delay and loss (`netem`, which can also take the rate), on `dev`
/// (`ns_args`: `-n NS`, or nothing for this namespace).
fn shape(ns_args: &[String], dev: &str, spec: &NetnsSpec) -> anyhow::Result<()> {
    let mut args: Vec<String> = ns_args.to_vec();
    args.extend(["qdisc", "add", "dev", dev, "root"].map(String::from));
    if spec.delay.is_some() || spec.loss.is_some() {
        args.push("netem".into());
        for (k, v) in [("delay", &spec.delay), ("loss", &spec.loss), ("rate", &spec.rate)] {
            if let Some(v) = v {
                args.extend([k.to_string(), v.clone()]);
            }
        }
        return run("tc", &args).map_err(|e| {
            anyhow::anyhow!(
                "netns:{}: delay= and loss= need netem, which this kernel does not have (no sch_netem): \
                 drop them, or shape with rate= alone ({e:#})",
                spec.name
            )
        });
    }
    let Some(rate) = &spec.rate else { return Ok(()) };
    // A burst of 64 KiB lets a full-size segment through; 50 ms of queue before drops.
    args.extend(["tbf", "rate", rate, "burst", "64kb", "latency", "50ms"].map(String::from));
    run("tc", &args).with_context(|| format!("netns:{}: cannot shape the link to rate={rate}", spec.name))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn ip_owned(args: &[String]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs an iproute2 command; its stderr is the error.
fn run(program: &str, args: &[String]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run `{program}`"))?;
    if out.status.success() {
        Ok(())
    } else {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// `s` quoted for a POSIX shell (what ssh hands the remote command to).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        assert_eq!(HostSpec::parse("local"), Ok(HostSpec::Local));
        assert_eq!(HostSpec::parse("ssh:bob@box1"), Ok(HostSpec::Ssh { dest: "bob@box1".into() }));
        let HostSpec::Netns(n) = HostSpec::parse("netns:b:rate=100mbit").unwrap() else { panic!() };
        assert_eq!((n.name.as_str(), n.rate.as_deref()), ("b", Some("100mbit")));
        assert!(HostSpec::parse("netns:b:jitter=1ms").unwrap_err().contains("unknown option"));
        assert!(HostSpec::parse("netns:").is_err());
        assert!(HostSpec::parse("box1").unwrap_err().contains("expected local"));
        assert!(parse_list("netns:a,netns:a:rate=1mbit").unwrap_err().contains("two client hosts"));
        assert_eq!(HostSpec::parse("ssh:bob@box1").unwrap().label(), "box1");
    }

    #[test]
    fn shell_quoting_survives_a_shell() {
        for s in ["plain", "with space", "it's", "", "a\"b$c"] {
            let out = Command::new("sh").args(["-c", &format!("printf %s {}", shell_quote(s))]).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
