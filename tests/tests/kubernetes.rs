//! The Kubernetes manifests in `deploy/kubernetes/` agree with the
//! gateway.toml their ConfigMap embeds: the kubelet's grace covers the
//! whole stop (lame duck + drain + abort + a margin), the lame duck
//! outlasts the readiness probe's notice, the container and Service ports
//! are the listeners' ports, the probes ask `/readyz` and `/healthz` on the
//! HTTP listener, the spool lives on the claimed volume, and the
//! securityContext is as tight as deploy/README.md says. The gateway
//! accepts the embedded configuration. Schema validity is `scripts/test`'s
//! job (kubernetes-validate, offline).
//!
//! Each check is shown to fail on a manifest that disagrees.
//!
//! Run alone: `cargo test -p lifecycle-tests --test kubernetes -- --nocapture`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lifecycle_tests::{check_config, workspace_root};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// What terminationGracePeriodSeconds must leave beyond the gateway's
/// own bound (lame duck + drain grace + abort grace).
const MARGIN: Duration = Duration::from_secs(5);

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy").join("kubernetes")
}

/// Every `*.yaml` in deploy/kubernetes by file name, as text.
fn manifest_texts() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(kubernetes_dir()).expect("read deploy/kubernetes") {
        let path = entry.expect("list deploy/kubernetes").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(
                name,
                std::fs::read_to_string(&path).expect("read a manifest"),
            );
        }
    }
    out
}

/// Every YAML document of every text.
fn documents(texts: &BTreeMap<String, String>) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (name, text) in texts {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).map_err(|e| format!("{name}: {e}"))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    Ok(docs)
}

/// `value[a][b]...` with string keys and list indices as numbers.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        })
}

fn text<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn number(value: &Value, path: &str) -> Option<u64> {
    at(value, path).and_then(Value::as_u64)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| text(d, "kind") == Some(kind))
        .collect()
}

/// The parts of the embedded gateway.toml the manifests depend on.
#[derive(Debug)]
struct GatewayToml {
    text: String,
    lame_duck: Duration,
    total: Duration,
    spool_dir: String,
    /// Listener name → (protocol, address).
    listeners: BTreeMap<String, (String, String)>,
}

impl GatewayToml {
    fn port_of(&self, listener: &str) -> Option<u64> {
        let (_, address) = self.listeners.get(listener)?;
        address.rsplit_once(':')?.1.parse().ok()
    }

    fn listener_of(&self, protocol: &str) -> Option<&str> {
        self.listeners
            .iter()
            .find(|(_, (p, _))| p == protocol)
            .map(|(n, _)| n.as_str())
    }
}

fn gateway_toml(docs: &[Value]) -> Result<GatewayToml, String> {
    let maps = of_kind(docs, "ConfigMap");
    let [map] = maps.as_slice() else {
        return Err(format!("expected one ConfigMap, found {}", maps.len()));
    };
    let text = at(map, "data")
        .and_then(|d| d.get("gateway.toml"))
        .and_then(Value::as_str)
        .ok_or("the ConfigMap has no data.gateway.toml")?
        .to_owned();
    let config: toml::Table = toml::from_str(&text).map_err(|e| format!("gateway.toml: {e}"))?;
    let duration = |key: &str| -> Result<Duration, String> {
        let value = config
            .get("shutdown")
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_str)
            .ok_or(format!("gateway.toml: set [shutdown] {key} explicitly"))?;
        humantime::parse_duration(value).map_err(|e| format!("[shutdown] {key}: {e}"))
    };
    let lame_duck = duration("lame_duck")?;
    let total = lame_duck + duration("drain_grace")? + duration("abort_grace")?;
    let spool_dir = config
        .get("spool_dir")
        .and_then(toml::Value::as_str)
        .ok_or("gateway.toml: no spool_dir")?
        .to_owned();
    let mut listeners = BTreeMap::new();
    for l in config
        .get("listener")
        .and_then(toml::Value::as_array)
        .ok_or("gateway.toml: no [[listener]]")?
    {
        let field = |k: &str| {
            l.get(k)
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        listeners.insert(field("name"), (field("protocol"), field("address")));
    }
    Ok(GatewayToml {
        text,
        lame_duck,
        total,
        spool_dir,
        listeners,
    })
}

/// Every disagreement between the manifests and their gateway.toml.
fn problems(texts: &BTreeMap<String, String>) -> Vec<String> {
    let docs = match documents(texts) {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    let config = match gateway_toml(&docs) {
        Ok(c) => c,
        Err(e) => return vec![e],
    };
    let mut out = Vec::new();
    let sets = of_kind(&docs, "StatefulSet");
    let [set] = sets.as_slice() else {
        return vec![format!("expected one StatefulSet, found {}", sets.len())];
    };
    let pod = at(set, "spec.template.spec")
        .cloned()
        .unwrap_or(Value::Null);
    let pod_labels = at(set, "spec.template.metadata.labels").cloned();

    // The kubelet's SIGKILL comes after the whole stop.
    match number(&pod, "terminationGracePeriodSeconds") {
        Some(secs) if Duration::from_secs(secs) >= config.total + MARGIN => {}
        other => out.push(format!(
            "terminationGracePeriodSeconds {other:?} must be at least lame_duck + drain_grace + \
             abort_grace ({:?}) + {MARGIN:?}",
            config.total
        )),
    }

    let containers = at(&pod, "containers").and_then(Value::as_sequence);
    let Some([container]) = containers.map(Vec::as_slice) else {
        out.push("expected one container".to_owned());
        return out;
    };
    // Container port name → number.
    let mut ports = BTreeMap::new();
    for p in at(container, "ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if let (Some(name), Some(port)) = (text(p, "name"), number(p, "containerPort")) {
            ports.insert(name.to_owned(), port);
        }
    }
    let resolve = |port: Option<&Value>| -> Option<u64> {
        match port? {
            Value::String(name) => ports.get(name).copied(),
            other => other.as_u64(),
        }
    };
    for (name, (_, address)) in &config.listeners {
        if config.port_of(name) != ports.get(name).copied() {
            out.push(format!(
                "listener {name:?} binds {address} but the container port named {name:?} is {:?}",
                ports.get(name)
            ));
        }
        if !(address.starts_with("0.0.0.0:") || address.starts_with("[::]:")) {
            out.push(format!(
                "listener {name:?} binds {address}: in a pod it must bind every address \
                 (0.0.0.0 or [::]) for the Service and the probes to reach it"
            ));
        }
    }

    // Probes on the HTTP listener.
    let http = config.listener_of("http").and_then(|n| config.port_of(n));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let got_path = text(container, &format!("{probe}.httpGet.path"));
        let got_port = resolve(at(container, &format!("{probe}.httpGet.port")));
        if got_path != Some(path) || got_port.is_none() || got_port != http {
            out.push(format!(
                "{probe} asks {got_path:?} on port {got_port:?}; it must ask {path} on the \
                 HTTP listener's port {http:?}"
            ));
        }
    }
    // The lame duck outlasts the time the readiness probe takes to notice.
    let period = number(container, "readinessProbe.periodSeconds").unwrap_or(10);
    let failures = number(container, "readinessProbe.failureThreshold").unwrap_or(3);
    let notice = Duration::from_secs(period * failures);
    if config.lame_duck <= notice {
        out.push(format!(
            "lame_duck {:?} must be longer than the readiness probe needs to notice \
             (periodSeconds {period} x failureThreshold {failures} = {notice:?})",
            config.lame_duck
        ));
    }

    // The Services map their ports onto the container's.
    let mut exposed = BTreeMap::new();
    for service in of_kind(&docs, "Service") {
        if at(service, "spec.selector") != pod_labels.as_ref() {
            out.push(format!(
                "Service {:?} selects {:?}, the pods are labelled {:?}",
                text(service, "metadata.name"),
                at(service, "spec.selector"),
                pod_labels
            ));
        }
        for p in at(service, "spec.ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let target = resolve(at(p, "targetPort"));
            if target.is_none() {
                out.push(format!(
                    "Service port {:?} targets no container port",
                    text(p, "name")
                ));
            }
            if let Some(port) = number(p, "port") {
                exposed.insert(port, target);
            }
        }
    }
    for (outside, protocol) in [(25, "smtp"), (143, "imap")] {
        let inside = config.listener_of(protocol).and_then(|n| config.port_of(n));
        if exposed.get(&outside).copied().flatten() != inside || inside.is_none() {
            out.push(format!(
                "a Service must expose {protocol} on port {outside} onto the {protocol} \
                 listener's port {inside:?}, not {:?}",
                exposed.get(&outside)
            ));
        }
    }
    for pdb in of_kind(&docs, "PodDisruptionBudget") {
        if at(pdb, "spec.selector.matchLabels") != pod_labels.as_ref() {
            out.push("the PodDisruptionBudget does not select the pods".to_owned());
        }
    }
    if of_kind(&docs, "PodDisruptionBudget").is_empty() {
        out.push("no PodDisruptionBudget".to_owned());
    }

    // The spool is on the claimed volume; the config is the ConfigMap.
    let claims: Vec<&str> = at(set, "spec.volumeClaimTemplates")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|c| text(c, "metadata.name"))
        .collect();
    let mounts: Vec<(&str, &str)> = at(container, "volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|m| Some((text(m, "name")?, text(m, "mountPath")?)))
        .collect();
    let on_claim = mounts.iter().any(|(name, path)| {
        claims.contains(name)
            && config
                .spool_dir
                .starts_with(&format!("{}/", path.trim_end_matches('/')))
    });
    if !on_claim {
        out.push(format!(
            "spool_dir {} is not under a mount of a volumeClaimTemplate ({claims:?}; mounts {mounts:?})",
            config.spool_dir
        ));
    }
    let args: Vec<&str> = at(container, "args")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
    {
        Some(path)
            if mounts
                .iter()
                .any(|(_, m)| path.strip_prefix(m) == Some("/gateway.toml")) => {}
        other => out.push(format!(
            "the container's --config {other:?} is not gateway.toml in a mounted directory"
        )),
    }

    // The securityContext deploy/README.md promises.
    let checks: [(&Value, &str, Value); 5] = [
        (&pod, "securityContext.runAsNonRoot", Value::Bool(true)),
        (
            &pod,
            "securityContext.seccompProfile.type",
            Value::from("RuntimeDefault"),
        ),
        (
            container,
            "securityContext.readOnlyRootFilesystem",
            Value::Bool(true),
        ),
        (
            container,
            "securityContext.allowPrivilegeEscalation",
            Value::Bool(false),
        ),
        (
            container,
            "securityContext.capabilities.drop.0",
            Value::from("ALL"),
        ),
    ];
    for (v, path, want) in checks {
        if at(v, path) != Some(&want) {
            out.push(format!("{path} must be {want:?}, is {:?}", at(v, path)));
        }
    }
    out
}

#[test]
fn the_manifests_agree_with_their_gateway_toml() {
    let texts = manifest_texts();
    assert!(texts.contains_key("statefulset.yaml"), "{:?}", texts.keys());
    let found = problems(&texts);
    assert!(
        found.is_empty(),
        "deploy/kubernetes disagrees:\n{}",
        found.join("\n")
    );
    let config = gateway_toml(&documents(&texts).unwrap()).unwrap();
    println!(
        "gateway.toml: lame duck {:?}, whole stop {:?}, listeners {:?}",
        config.lame_duck, config.total, config.listeners
    );
}

/// Each kind of disagreement is found (so the test above can fail).
#[test]
fn a_disagreement_is_found() {
    let texts = manifest_texts();
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "grace too short",
            "statefulset.yaml",
            "terminationGracePeriodSeconds: 40",
            "terminationGracePeriodSeconds: 30",
        ),
        (
            "lame duck shorter than the probe",
            "configmap.yaml",
            "lame_duck = \"10s\"",
            "lame_duck = \"3s\"",
        ),
        (
            "drain grown past the grace",
            "configmap.yaml",
            "drain_grace = \"20s\"",
            "drain_grace = \"60s\"",
        ),
        (
            "container port",
            "statefulset.yaml",
            "containerPort: 2525",
            "containerPort: 2526",
        ),
        (
            "listener port",
            "configmap.yaml",
            "address = \"0.0.0.0:1143\"",
            "address = \"0.0.0.0:1144\"",
        ),
        (
            "readiness path",
            "statefulset.yaml",
            "path: /readyz",
            "path: /ready",
        ),
        (
            "liveness path",
            "statefulset.yaml",
            "path: /healthz",
            "path: /metrics",
        ),
        (
            "root filesystem",
            "statefulset.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        ),
    ];
    for (what, file, from, to) in cases {
        let mut changed = texts.clone();
        let text = changed.get_mut(file).unwrap();
        assert_eq!(
            text.matches(from).count(),
            1,
            "{what}: {from:?} once in {file}"
        );
        *text = text.replace(from, to);
        let found = problems(&changed);
        assert!(!found.is_empty(), "{what}: not found");
        println!("{what}: {}", found.join("; "));
    }
}

/// The gateway itself accepts the configuration the ConfigMap carries.
#[test]
fn the_gateway_accepts_the_embedded_gateway_toml() {
    let config = gateway_toml(&documents(&manifest_texts()).unwrap()).unwrap();
    let bin = lifecycle_tests::gateway_bin().expect("build the gateway");
    let check = check_config(&bin, &config.text).expect("run lifecycle-gateway --check-config");
    assert!(
        check.accepted,
        "the ConfigMap's gateway.toml is rejected: {}",
        check.said
    );
}

/// scripts/test validates the manifests offline against a pinned
/// Kubernetes version, and installs the validator.
#[test]
fn scripts_test_validates_the_manifests() {
    let script = std::fs::read_to_string(workspace_root().join("scripts").join("test"))
        .expect("read scripts/test");
    assert!(script.contains("[cmd:kubernetes-validate]=kubernetes-validate"));
    assert!(script.contains(
        "kubernetes-validate --strict --quiet --kubernetes-version \"$KUBERNETES_VERSION\" deploy/kubernetes/*.yaml"
    ));
    assert!(script
        .lines()
        .any(|l| l.starts_with("KUBERNETES_VERSION=1.")));
}
