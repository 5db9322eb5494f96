//! The values of flags: each parser accepts what a flag means and names what it wants
//! in its error, which clap puts after the flag's name.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ringbench_backends::Variant;

use crate::client::MAX_SIZE_BYTES;
use crate::matrix::Target;

pub(super) fn parse_target(s: &str) -> Result<Target, String> {
    let (name, command) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=COMMAND"))?;
    let ok_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !ok_name {
        return Err(format!("target name '{name}' must be letters, digits, '-' or '.'"));
    }
    if Variant::parse(name).is_ok() {
        return Err(format!("target name '{name}' is a backend's name; choose another"));
    }
    if !command.contains("{port}") {
        return Err(format!("the command of target '{name}' must contain {{port}}, where its port goes"));
    }
    Ok(Target { name: name.to_string(), command: command.trim().to_string() })
}

pub(super) fn parse_positive_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' must be a number of milliseconds, more than 0")),
    }
}

pub(super) fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() && r <= 1e9 => Ok(r),
        _ => Err(format!("'{s}' must be a rate in requests per second, more than 0")),
    }
}

pub(super) fn parse_open_fd(s: &str) -> Result<i32, String> {
    let fd: i32 = s.parse().map_err(|_| format!("'{s}' is not a descriptor number"))?;
    if fd < 3 || !ringbench_backends::sys::is_open(fd) {
        return Err(format!("descriptor {fd} is not open"));
    }
    Ok(fd)
}

pub(super) fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let mut addrs = s.to_socket_addrs().map_err(|e| format!("'{s}' is not HOST:PORT that resolves ({e})"))?;
    addrs.next().ok_or_else(|| format!("'{s}' resolves to no address"))
}

pub(super) fn parse_buffer_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (64..=1_048_576).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' must be a number of bytes from 64 to 1048576")),
    }
}

pub(super) fn parse_buffers(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && n <= 32_768 => Ok(n),
        _ => Err(format!("'{s}' must be a power of two from 1 to 32768")),
    }
}

pub(super) fn parse_secs_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' must be a number of seconds from 0 to 86400")),
    }
}

pub(super) fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(v > 0.0 && v.is_finite() && v <= 86_400.0) {
        return Err(format!("'{s}' must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

pub(super) fn parse_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number of bytes"))?;
    if v == 0 {
        return Err("must be at least 1 byte".into());
    }
    if v > MAX_SIZE_BYTES {
        return Err(format!("{v} is over the maximum of {MAX_SIZE_BYTES} bytes (64 MiB)"));
    }
    Ok(v)
}

/// `--client-hosts`, parsed whole (one value, not one per comma).
#[derive(Clone, Debug)]
pub(super) struct HostList(pub(super) Vec<crate::hosts::HostSpec>);

pub(super) fn parse_hosts(s: &str) -> Result<HostList, String> {
    crate::hosts::parse_list(s).map(HostList)
}

pub(super) fn parse_slice_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=60.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' must be a number of seconds from 0.01 to 60")),
    }
}

pub(super) fn parse_precision(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 0.5 => Ok(v),
        _ => Err(format!("'{s}' must be a fraction more than 0 and at most 0.5 (0.01: ±1 %)")),
    }
}

/// A `--backends` entry: a backend or variant, or `none` (targets alone).
pub(super) fn parse_backend(s: &str) -> Result<Option<Variant>, String> {
    if s == "none" {
        return Ok(None);
    }
    Variant::parse(s).map(Some)
}
