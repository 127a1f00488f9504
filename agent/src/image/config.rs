//! The image configuration document, in the OCI image-spec `config` format (the same JSON Docker
//! and registries use), so that an image id here is what it would be anywhere: the sha256 of
//! these bytes. Only the fields shoal uses are modelled; unknown fields of configs from elsewhere
//! are ignored when reading, and the stored bytes are never re-serialised (the id stays valid).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `application/vnd.oci.image.config.v1+json`, trimmed to what shoal reads and writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OciImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub config: OciRunConfig,
    #[serde(default)]
    pub rootfs: OciRootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<OciHistory>,
}

/// The `config` object: how to run a container of the image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OciRunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    /// `{"80/tcp": {}}` (null in some Docker configs).
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `{"/data": {}}`.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    /// Docker's extension (not in the OCI spec, but in every Docker-built config).
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<OciHealthcheck>,
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub args_escaped: bool,
}

/// Docker's `Healthcheck` (durations in nanoseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OciHealthcheck {
    #[serde(rename = "Test", default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `rootfs`: the layers' uncompressed digests (diff ids), lowest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OciRootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl Default for OciRootFs {
    fn default() -> Self {
        OciRootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OciHistory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl OciRunConfig {
    /// Converts to the wire model.
    pub fn to_proto(&self) -> shoal_proto::ImageConfig {
        shoal_proto::ImageConfig {
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            cmd: self.cmd.clone().unwrap_or_default(),
            env: self.env.clone().unwrap_or_default(),
            workdir: self.working_dir.clone(),
            user: self.user.clone(),
            exposed_ports: self
                .exposed_ports
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            volumes: self
                .volumes
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            labels: self
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            stop_signal: self.stop_signal.clone(),
            healthcheck: self
                .healthcheck
                .as_ref()
                .map(|h| shoal_proto::ImageHealthcheck {
                    test: h.test.clone().unwrap_or_default(),
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    start_interval: h.start_interval,
                    retries: h.retries,
                }),
            shell: self.shell.clone().unwrap_or_default(),
            args_escaped: self.args_escaped,
        }
    }
}

impl OciHistory {
    /// Converts to the wire model.
    pub fn to_proto(&self) -> shoal_proto::ImageHistory {
        shoal_proto::ImageHistory {
            created: self.created.as_deref().and_then(parse_rfc3339).unwrap_or(0),
            created_by: self.created_by.clone().unwrap_or_default(),
            comment: self.comment.clone().unwrap_or_default(),
            author: self.author.clone().unwrap_or_default(),
            empty_layer: self.empty_layer,
        }
    }
}

/// The `architecture` value (Go's GOARCH names, as the OCI spec uses) of this build.
pub(crate) fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Formats unix milliseconds as RFC 3339 in UTC (`2024-05-01T12:00:00.123Z`; no fraction when
/// the milliseconds are zero).
pub(crate) fn format_rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if ms == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
    }
}

/// Parses RFC 3339 (any fraction, `Z` or `±hh:mm`) to unix milliseconds; `None` if malformed.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1000 + ms)
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_rfc3339_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
        for ms in [
            0,
            1,
            951_782_400_000,
            1_700_000_000_123,
            4_102_444_800_000,
            -86_400_001,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123456789+01:00"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14 22:13:20Z"),
            Some(1_700_000_000_000)
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn image_config_serialises_like_oci_and_ignores_unknown_fields() {
        let c = OciImageConfig {
            created: Some(format_rfc3339(0)),
            architecture: "amd64".into(),
            os: "linux".into(),
            config: OciRunConfig {
                env: Some(vec!["PATH=/bin".into()]),
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
            rootfs: OciRootFs {
                kind: "layers".into(),
                diff_ids: vec!["sha256:00".into()],
            },
            history: vec![],
            ..Default::default()
        };
        let json = serde_json::to_string(&c).expect("serialise");
        assert_eq!(
            json,
            r#"{"created":"1970-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#
        );
        let docker = r#"{"architecture":"amd64","config":{"Cmd":null,"Entrypoint":["/x"],"Labels":{"a":"b"},"ExposedPorts":{"80/tcp":{}}},"os":"linux","rootfs":{"type":"layers","diff_ids":[]},"extra":1}"#;
        let parsed: OciImageConfig = serde_json::from_str(docker).expect("parse");
        assert_eq!(parsed.config.entrypoint, Some(vec!["/x".to_string()]));
        assert_eq!(parsed.config.cmd, None);
        let p = parsed.config.to_proto();
        assert_eq!(p.exposed_ports, vec!["80/tcp".to_string()]);
        assert_eq!(p.labels.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn image_config_parses_what_docker_inspect_shows() {
        let docker = r#"{"architecture":"amd64","os":"linux","author":"me","config":{
            "ExposedPorts":{"80/tcp":{},"53/udp":{}},"Volumes":{"/data":{}},"Labels":null,
            "StopSignal":"SIGQUIT","Shell":["/bin/bash","-c"],"ArgsEscaped":true,
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":3}},
            "rootfs":{"type":"layers","diff_ids":[]},
            "history":[{"created":"2024-01-01T00:00:00Z","created_by":"RUN x","empty_layer":true}]}"#;
        let c: OciImageConfig = serde_json::from_str(docker).expect("parse");
        let p = c.config.to_proto();
        assert_eq!(
            p.exposed_ports,
            vec!["53/udp".to_string(), "80/tcp".to_string()]
        );
        assert_eq!(p.volumes, vec!["/data".to_string()]);
        assert!(p.labels.is_empty());
        assert_eq!(p.stop_signal, "SIGQUIT");
        assert_eq!(p.shell, vec!["/bin/bash", "-c"]);
        let h = p.healthcheck.expect("healthcheck");
        assert_eq!(h.test, vec!["CMD-SHELL", "true"]);
        assert_eq!((h.interval, h.retries), (1_000_000_000, 3));
        assert_eq!(c.author.as_deref(), Some("me"));
        let hist = c.history[0].to_proto();
        assert!(hist.empty_layer);
        assert_eq!(hist.created_by, "RUN x");
        assert_eq!(hist.created, 1_704_067_200_000);
    }
}
