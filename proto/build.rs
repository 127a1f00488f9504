//! Generates the prost/tonic code from `proto/*.proto` with protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal.proto",
        "proto/containers.proto",
        "proto/cluster.proto",
        "proto/secrets.proto",
        "proto/registry.proto",
        "proto/build.proto",
        "proto/peer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut builder = tonic_prost_build::configure()
        // The CLI prints any object with `--format json`; serde gives that for free.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        // A store change is as large as its largest object: a service, inline, is ~2.9 KB
        // (two specs), which every change of a command of thousands of task changes
        // would take (a log entry decoded for apply, a command kept for a retry).
        .boxed(".shoal.v1.StoreObject.object.service");
    // Enum fields are i32 in prost; print them by name (see src/serde_enums.rs).
    for (field, module) in [
        ("shoal.v1.Task.desired_state", "task_state"),
        ("shoal.v1.TaskStatus.state", "task_state"),
        ("shoal.v1.Node.role", "node_role"),
        ("shoal.v1.Node.availability", "node_availability"),
        ("shoal.v1.NodeStatus.state", "node_state"),
        ("shoal.v1.RestartPolicy.condition", "restart_condition"),
        ("shoal.v1.StoreChange.kind", "change_kind"),
        ("shoal.v1.Mount.type", "mount_type"),
        ("shoal.v1.PortConfig.protocol", "port_protocol"),
        ("shoal.v1.PortConfig.publish_mode", "publish_mode"),
        (
            "shoal.v1.ServiceDependency.condition",
            "dependency_condition",
        ),
        (
            "shoal.v1.UpdateConfig.failure_action",
            "update_failure_action",
        ),
        ("shoal.v1.UpdateConfig.order", "update_order"),
        ("shoal.v1.UpdateStatus.state", "update_state"),
        ("shoal.v1.SecretSpec.kind", "secret_kind"),
        ("shoal.v1.ListSecretsRequest.kind", "secret_kind"),
        ("shoal.v1.GetSecretRequest.kind", "secret_kind"),
        ("shoal.v1.UpdateConfig.strategy", "update_strategy"),
        ("shoal.v1.UpdateConfig.promote", "promote_mode"),
        ("shoal.v1.UpdateStatus.phase", "blue_green_phase"),
    ] {
        builder = builder.field_attribute(
            field,
            format!("#[serde(with = \"crate::serde_enums::{module}\")]"),
        );
    }
    builder.compile_fds(fds)?;
    share_task_spec()?;
    Ok(())
}

/// `Task.spec` becomes a [`SharedSpec`](../src/shared_spec.rs) (an `Arc`, encoded exactly as
/// the `ServiceSpec` it holds): the tasks of one service version share their spec in memory
/// instead of carrying a ~1.4 KB copy each. prost-build has no option for a field's type, so
/// the generated struct is edited here; the build fails if it no longer looks as expected.
fn share_task_spec() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("shoal.v1.rs");
    let code = std::fs::read_to_string(&out)?;
    let start = code
        .find("pub struct Task {")
        .ok_or("build.rs: no `pub struct Task` in the generated code")?;
    let end = start
        + code[start..]
            .find("\n}")
            .ok_or("build.rs: `struct Task` does not end")?;
    let field = "pub spec: ::core::option::Option<ServiceSpec>,";
    let body = &code[start..end];
    if body.matches(field).count() != 1 {
        return Err(format!("build.rs: `{field}` not found once in `struct Task`").into());
    }
    let body = body.replace(
        field,
        "pub spec: ::core::option::Option<crate::SharedSpec>,",
    );
    let patched = format!("{}{}{}", &code[..start], body, &code[end..]);
    std::fs::write(&out, patched)?;
    Ok(())
}
