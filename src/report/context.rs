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
