//! What a report says about where it was measured: `env.json`, read back, and the caption
//! line every chart and the summary carry.

use std::path::Path;

/// `DIR/env.json` if present (written by the matrix), else JSON null.
pub fn read_env(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("env.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The order a report shows servers in, the baseline first: `asked`, else the sweep's
/// (env.json), else epoll first then by name; only servers that have runs.
pub fn order(
    env: &serde_json::Value,
    asked: &[String],
    baseline: Option<&str>,
    present: &[String],
) -> anyhow::Result<Vec<String>> {
    let recorded = || -> Vec<String> {
        let names = |k: &str, field: Option<&str>| -> Vec<String> {
            let list = env.pointer(&format!("/settings/{k}")).and_then(|v| v.as_array()).cloned().unwrap_or_default();
            list.iter()
                .filter_map(|v| match field {
                    Some(f) => v.get(f).and_then(|x| x.as_str()).map(String::from),
                    None => v.as_str().map(String::from),
                })
                .collect()
        };
        let order = names("order", None);
        if !order.is_empty() {
            return order;
        }
        names("backends", None).into_iter().chain(names("targets", Some("name"))).collect()
    };
    let mut order: Vec<String> = if asked.is_empty() { recorded() } else { asked.to_vec() };
    order.retain(|n| present.contains(n));
    let mut rest: Vec<String> = present.iter().filter(|n| !order.contains(n)).cloned().collect();
    rest.sort_by_key(|n| (n != "epoll", n.clone()));
    order.extend(rest);
    let base = baseline
        .map(String::from)
        .or_else(|| env.pointer("/settings/baseline").and_then(|b| b.as_str()).map(String::from))
        .or_else(|| order.iter().find(|n| *n == "epoll").cloned());
    if let Some(b) = base {
        let i =
            order.iter().position(|n| *n == b).ok_or_else(|| anyhow::anyhow!("--baseline {b}: no runs of it here"))?;
        let b = order.remove(i);
        order.insert(0, b);
    }
    Ok(order)
}

/// The machine's speculative-execution mitigations and the probe's syscall cost, the two
/// facts that most often explain why another machine's answer differs.
pub fn costs_line(env: &serde_json::Value) -> Option<String> {
    let mitigations = env.get("mitigations").and_then(|m| m.as_str())?;
    let syscall = env
        .pointer("/probe/costs")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|x| x["name"] == "null_syscall"))
        .and_then(|x| x["median_ns"].as_f64());
    Some(match syscall {
        Some(ns) => format!("null syscall {ns:.0} ns (probe) · mitigations: {mitigations}"),
        None => format!("mitigations: {mitigations}"),
    })
}

/// The probe's median cost `name`, in ns.
pub fn probe_ns(env: &serde_json::Value, name: &str) -> Option<f64> {
    env.pointer("/probe/costs")?.as_array()?.iter().find(|x| x["name"] == name)?["median_ns"].as_f64()
}

/// One line naming the machine and the settings, for chart captions.
pub fn caption(env: &serde_json::Value) -> String {
    let s = |k: &str| env.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    if env.is_null() {
        return "machine not recorded (no env.json)".into();
    }
    let pin = env.get("pinning").and_then(|p| p.as_str()).unwrap_or("not pinned");
    let workers = env.pointer("/settings/workers").and_then(|v| v.as_u64());
    format!(
        "{} · Linux {} · {} CPUs · {} · {}",
        s("cpu_model"),
        s("kernel"),
        env.get("cpus").and_then(|v| v.as_u64()).unwrap_or(0),
        pin,
        match workers {
            Some(1) => "1 worker".to_string(),
            Some(w) => format!("{w} workers"),
            None => "workers not recorded".to_string(),
        }
    )
}
