//! The loader's acceptance suite: in-memory files under `/proj`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::interp::{interpolate, parse_dotenv};
use super::*;

struct MemFs(HashMap<PathBuf, String>);

impl FileSystem for MemFs {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }
}

fn fs(files: &[(&str, &str)]) -> MemFs {
    MemFs(
        files
            .iter()
            .map(|(p, t)| {
                (
                    convert::clean_path(&Path::new("/proj").join(p)),
                    t.to_string(),
                )
            })
            .collect(),
    )
}

fn opts(env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        working_dir: PathBuf::from("/proj"),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Loads `compose.yaml` (plus any other files) with `env`.
fn load_files(files: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Loaded, ComposeError> {
    load_with(&opts(env), &fs(files))
}

fn load_one(yaml: &str) -> Project {
    match load_files(&[("compose.yaml", yaml)], &[]) {
        Ok(l) => l.project,
        Err(e) => panic!("{e}"),
    }
}

fn load_err(yaml: &str) -> String {
    match load_files(&[("compose.yaml", yaml)], &[]) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn svc<'a>(p: &'a Project, name: &str) -> &'a Service {
    p.services
        .get(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn env_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn interp(text: &str, env: &[(&str, &str)]) -> Result<String, String> {
    interpolate(text, &env_map(env), &mut Vec::new())
}

// ---------------------------------------------------------------------------------------------
// interpolation

#[test]
fn interpolation_operators() {
    let env = [("SET", "v"), ("EMPTY", "")];
    let cases = [
        ("$SET", "v"),
        ("${SET}", "v"),
        ("a${SET}b", "avb"),
        ("$SET.x", "v.x"),
        ("${UNSET}", ""),
        ("$UNSET", ""),
        ("${SET:-d}", "v"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET:-d}", "d"),
        ("${SET-d}", "v"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${SET+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${SET:?boom}", "v"),
        ("${EMPTY?boom}", ""),
        ("${UNSET:-${SET:-x}}", "v"),
        ("${UNSET:-${ALSO:-x}}", "x"),
        ("${UNSET:-a-${SET}-b}", "a-v-b"),
        ("${UNSET:-}", ""),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: $5", "cost: $5"),
        ("$", "$"),
        ("a $ b", "a $ b"),
        ("100%$", "100%$"),
        ("${UNSET:-{json}}", "{json}"),
        ("${UNSET:-a:b}", "a:b"),
        ("${SET}${SET}", "vv"),
    ];
    for (input, want) in cases {
        assert_eq!(interp(input, &env).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn interpolation_errors() {
    let env = [("EMPTY", "")];
    assert_eq!(
        interp("${NOPE:?set NOPE please}", &env).unwrap_err(),
        "required variable NOPE is missing a value: set NOPE please"
    );
    assert_eq!(
        interp("${EMPTY:?}", &env).unwrap_err(),
        "required variable EMPTY is missing a value"
    );
    assert_eq!(
        interp("${NOPE?gone}", &env).unwrap_err(),
        "required variable NOPE is not set: gone"
    );
    assert_eq!(
        interp("${UNCLOSED", &env).unwrap_err(),
        "invalid interpolation format for \"${UNCLOSED\": unclosed \"${\""
    );
    assert!(interp("${}", &env)
        .unwrap_err()
        .starts_with("invalid interpolation format"));
    assert!(interp("${9X}", &env)
        .unwrap_err()
        .starts_with("invalid interpolation format"));
    assert!(interp("${A B}", &env)
        .unwrap_err()
        .starts_with("invalid interpolation format"));
}

#[test]
fn unset_variables_warn() {
    let l = load_files(
        &[("compose.yaml", "services:\n  a:\n    image: x${TAG}\n")],
        &[],
    )
    .unwrap();
    assert_eq!(svc(&l.project, "a").image.as_deref(), Some("x"));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("\"TAG\" variable is not set")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn interpolation_before_typing() {
    let l = load_files(
        &[(
            "compose.yaml",
            "services:\n  web:\n    image: nginx:${TAG:-latest}\n    ports: [\"${PORT:-8080}:80\"]\n    read_only: ${RO:-false}\n    deploy:\n      replicas: ${N}\n    labels:\n      ${NOT_A_KEY}: x\n",
        )],
        &[("N", "3")],
    )
    .unwrap();
    let web = svc(&l.project, "web");
    assert_eq!(web.image.as_deref(), Some("nginx:latest"));
    assert_eq!(web.ports[0].published.as_deref(), Some("8080"));
    assert!(!web.read_only);
    assert_eq!(web.deploy.as_ref().unwrap().replicas, Some(3));
    // Keys are not interpolated.
    assert!(web.labels.contains_key("${NOT_A_KEY}"));
}

#[test]
fn interpolation_error_names_the_file_and_key() {
    let e = load_files(
        &[(
            "compose.yaml",
            "services:\n  web:\n    image: ${IMG:?set IMG}\n",
        )],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/compose.yaml:3: services.web.image: required variable IMG is missing a value: set IMG"
    );
}

#[test]
fn environment_beats_dotenv() {
    let files = [
        (
            "compose.yaml",
            "services:\n  a:\n    image: ${IMG}:${TAG}\n",
        ),
        (".env", "IMG=fromfile\nTAG=1\n"),
    ];
    let l = load_files(&files, &[("TAG", "2")]).unwrap();
    assert_eq!(svc(&l.project, "a").image.as_deref(), Some("fromfile:2"));
}

#[test]
fn env_file_option_replaces_dotenv() {
    let fs = fs(&[
        ("compose.yaml", "services:\n  a:\n    image: ${IMG:-none}\n"),
        (".env", "IMG=dotenv\n"),
        ("other.env", "X=1\n"),
    ]);
    let mut o = opts(&[]);
    o.env_files = vec!["other.env".into()];
    let p = load_with(&o, &fs).unwrap().project;
    assert_eq!(svc(&p, "a").image.as_deref(), Some("none"));
    o.env_files = vec!["missing.env".into()];
    assert!(load_with(&o, &fs)
        .unwrap_err()
        .to_string()
        .contains("missing.env"));
}

// ---------------------------------------------------------------------------------------------
// .env

#[test]
fn dotenv_parsing() {
    let text = r#"
# a comment
PLAIN=value
export EXPORTED=yes
SPACED = padded   
INLINE=abc # comment
HASH=abc#not-a-comment
SINGLE='it''s $PLAIN # kept'
DOUBLE="line1\nline2 \"q\" $PLAIN"
ESCAPED="cost \$5"
MULTI="a
b"
QUOTED_COMMENT='x' # trailing
EMPTY=
REF=${PLAIN}-${NOPE:-def}
FROM_ENV
NOT_IN_ENV
EQUALS=a=b=c
"#;
    let env = env_map(&[("FROM_ENV", "outside")]);
    let got: BTreeMap<String, String> = parse_dotenv(text, &env).unwrap().into_iter().collect();
    let want = env_map(&[
        ("PLAIN", "value"),
        ("EXPORTED", "yes"),
        ("SPACED", "padded"),
        ("INLINE", "abc"),
        ("HASH", "abc#not-a-comment"),
        ("SINGLE", "it"),
        ("DOUBLE", "line1\nline2 \"q\" value"),
        ("ESCAPED", "cost $5"),
        ("MULTI", "a\nb"),
        ("QUOTED_COMMENT", "x"),
        ("EMPTY", ""),
        ("REF", "value-def"),
        ("FROM_ENV", "outside"),
        ("EQUALS", "a=b=c"),
    ]);
    assert_eq!(got, want);
}

#[test]
fn dotenv_single_quotes_are_literal() {
    let env = env_map(&[]);
    let got = parse_dotenv("A='$HOME \\n ${X:-y}'\n", &env).unwrap();
    assert_eq!(
        got,
        vec![("A".to_string(), "$HOME \\n ${X:-y}".to_string())]
    );
}

#[test]
fn dotenv_errors() {
    let env = env_map(&[]);
    assert_eq!(
        parse_dotenv("A=\"open\n", &env).unwrap_err(),
        "line 1: unterminated double quote"
    );
    assert_eq!(
        parse_dotenv("\nB C=1\n", &env).unwrap_err(),
        "line 2: invalid variable name \"B C\""
    );
}

// ---------------------------------------------------------------------------------------------
// YAML: anchors, merge keys, billion laughs

#[test]
fn anchors_and_nested_merge_keys() {
    let p = load_one(
        r#"
x-base: &base
  image: base:1
  environment:
    A: "1"
  restart: always
x-logging: &logging
  logging:
    driver: json-file
    options: {max-size: 10m}
x-more: &more
  <<: [*base, *logging]
  restart: on-failure
services:
  web:
    <<: *more
    environment:
      B: "2"
  worker:
    <<: *base
    labels: &labels
      tier: back
  other:
    image: o
    labels: *labels
"#,
    );
    let web = svc(&p, "web");
    assert_eq!(web.image.as_deref(), Some("base:1"));
    assert_eq!(web.restart.as_deref(), Some("on-failure"));
    assert_eq!(
        web.logging.as_ref().unwrap().driver.as_deref(),
        Some("json-file")
    );
    // A merge key's value is replaced, not merged, by a local key (YAML semantics).
    assert_eq!(web.environment, env_map(&[("B", "2")]));
    assert_eq!(svc(&p, "worker").restart.as_deref(), Some("always"));
    assert_eq!(svc(&p, "other").labels, env_map(&[("tier", "back")]));
}

#[test]
fn billion_laughs_fails_fast() {
    let mut yaml = String::from(
        "x-a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        yaml.push_str(&format!("x-{}: &{} [{}]\n", w[1], w[1], refs));
    }
    yaml.push_str("services:\n  a:\n    image: x\n    command: *i\n");
    let start = Instant::now();
    let e = load_err(&yaml);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(e.contains("too many YAML alias expansions"), "{e}");
    assert!(e.starts_with("/proj/compose.yaml"), "{e}");
}

#[test]
fn yaml_syntax_error_has_line() {
    let e = load_err("services:\n  web:\n    image: [unclosed\n");
    assert!(e.starts_with("/proj/compose.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn unknown_yaml_tag() {
    let e = load_err("services:\n  web:\n    image: !weird x\n");
    assert_eq!(e, "/proj/compose.yaml:3: services.web.image: unsupported YAML tag !weird: only !reset and !override are known");
}

// ---------------------------------------------------------------------------------------------
// services: syntaxes

#[test]
fn ports_short_and_long() {
    let p = load_one(
        r#"
services:
  web:
    image: x
    ports:
      - "8080:80"
      - "127.0.0.1:8081:81/udp"
      - "8000-8001:90-91"
      - "3000"
      - 4000
      - "9000-9002:99"
      - "[::1]:7000:70"
      - "127.0.0.1::60"
      - target: 443
        published: "8443"
        host_ip: 0.0.0.0
        protocol: tcp
        mode: host
"#,
    );
    let got: Vec<String> = svc(&p, "web")
        .ports
        .iter()
        .map(|p| {
            format!(
                "{}|{}|{}|{}|{}",
                p.host_ip.as_deref().unwrap_or("-"),
                p.published.as_deref().unwrap_or("-"),
                p.target,
                p.protocol,
                p.mode
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "-|8080|80|tcp|ingress",
            "127.0.0.1|8081|81|udp|ingress",
            "-|8000|90|tcp|ingress",
            "-|8001|91|tcp|ingress",
            "-|-|3000|tcp|ingress",
            "-|-|4000|tcp|ingress",
            "-|9000-9002|99|tcp|ingress",
            "::1|7000|70|tcp|ingress",
            "127.0.0.1|-|60|tcp|ingress",
            "0.0.0.0|8443|443|tcp|host",
        ]
    );
}

#[test]
fn invalid_ports() {
    let cases = [
        (
            "x",
            "invalid port \"x\": container port \"x\" is not a port number (1-65535)",
        ),
        (
            "80/xyz",
            "invalid port \"80/xyz\": unknown protocol \"xyz\" (tcp, udp or sctp)",
        ),
        (
            "70000:80",
            "invalid port \"70000:80\": host port \"70000\" is not a port number (1-65535)",
        ),
        (
            "8000-8002:80-81",
            "invalid port \"8000-8002:80-81\": host and container port ranges differ in size",
        ),
        (
            "90-80",
            "invalid port \"90-80\": container port range \"90-80\" ends before it starts",
        ),
        (
            "a.b.c:1:2",
            "invalid port \"a.b.c:1:2\": invalid host IP \"a.b.c\"",
        ),
    ];
    for (spec, msg) in cases {
        let e = load_err(&format!(
            "services:\n  web:\n    image: x\n    ports:\n      - \"80\"\n      - \"{spec}\"\n"
        ));
        assert_eq!(
            e,
            format!("/proj/compose.yaml:6: services.web.ports[1]: {msg}")
        );
    }
}

#[test]
fn volumes_short_and_long() {
    let p = load_one(
        r#"
services:
  db:
    image: x
    volumes:
      - ./data:/data:ro
      - named:/x
      - /abs:/y:z
      - ../up:/up:rw,rshared
      - /anon
      - named:/nc:nocopy
      - type: bind
        source: ./conf
        target: /etc/conf
        read_only: true
        bind: {propagation: rprivate, create_host_path: false}
      - type: volume
        source: named
        target: /v
        volume: {nocopy: true, subpath: sub}
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 64m, mode: "1777"}
volumes:
  named: {}
"#,
    );
    let v = &svc(&p, "db").volumes;
    assert_eq!(v[0].kind, "bind");
    assert_eq!(v[0].source.as_deref(), Some("/proj/data"));
    assert!(v[0].read_only);
    assert!(v[0].bind.as_ref().unwrap().create_host_path);
    assert_eq!(
        (v[1].kind.as_str(), v[1].source.as_deref()),
        ("volume", Some("named"))
    );
    assert_eq!(v[2].bind.as_ref().unwrap().selinux.as_deref(), Some("z"));
    assert_eq!(v[3].source.as_deref(), Some("/up"));
    assert_eq!(
        v[3].bind.as_ref().unwrap().propagation.as_deref(),
        Some("rshared")
    );
    assert_eq!(
        (v[4].kind.as_str(), v[4].source.as_deref()),
        ("volume", None)
    );
    assert!(v[5].volume.as_ref().unwrap().nocopy);
    assert_eq!(v[6].source.as_deref(), Some("/proj/conf"));
    assert!(!v[6].bind.as_ref().unwrap().create_host_path);
    assert_eq!(
        v[7].volume.as_ref().unwrap().subpath.as_deref(),
        Some("sub")
    );
    assert_eq!(v[8].tmpfs.as_ref().unwrap().size, Some(64 << 20));
    assert_eq!(v[8].tmpfs.as_ref().unwrap().mode, Some(0o1777));
}

#[test]
fn invalid_volumes() {
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    volumes:\n      - data:relative\n"),
        "/proj/compose.yaml:5: services.a.volumes[0]: invalid volume \"data:relative\": the target must be an absolute path in the container"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    volumes:\n      - ./d:/d:bogus\n"),
        "/proj/compose.yaml:5: services.a.volumes[0]: invalid volume \"./d:/d:bogus\": unknown mode \"bogus\" for a bind mount"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    volumes:\n      - data:/d\n"),
        "/proj/compose.yaml:5: services.a.volumes[0]: volume \"data\" is not defined in the top-level volumes"
    );
}

#[test]
fn build_forms() {
    let p = load_one(
        r#"
services:
  a:
    build: ./app
  b:
    build:
      context: ctx
      dockerfile: Dockerfile.dev
      args: [A=1, B]
      target: dev
  c:
    build:
      context: https://github.com/x/y.git
      args: {N: 1, T: true}
"#,
    );
    assert_eq!(svc(&p, "a").build.as_ref().unwrap().context, "/proj/app");
    let b = svc(&p, "b").build.as_ref().unwrap();
    assert_eq!(b.context, "/proj/ctx");
    assert_eq!(b.dockerfile.as_deref(), Some("Dockerfile.dev"));
    assert_eq!(b.args.get("A"), Some(&Some("1".to_string())));
    assert_eq!(b.args.get("B"), Some(&None));
    assert_eq!(b.target.as_deref(), Some("dev"));
    let c = svc(&p, "c").build.as_ref().unwrap();
    assert_eq!(c.context, "https://github.com/x/y.git");
    assert_eq!(c.args.get("T"), Some(&Some("true".to_string())));
}

#[test]
fn command_and_entrypoint() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    command: sh -c 'echo "hello world" && sleep 1' --flag=a\ b
    entrypoint: ["/bin/tini", "--"]
  b:
    image: x
    command: []
"#,
    );
    assert_eq!(
        svc(&p, "a").command.as_deref().unwrap(),
        ["sh", "-c", "echo \"hello world\" && sleep 1", "--flag=a b"]
    );
    assert_eq!(
        svc(&p, "a").entrypoint.as_deref().unwrap(),
        ["/bin/tini", "--"]
    );
    assert_eq!(svc(&p, "b").command.as_deref(), Some(&[][..]));
}

#[test]
fn environment_forms() {
    let l = load_files(
        &[
            (
                "compose.yaml",
                r#"
services:
  a:
    image: x
    env_file:
      - a.env
      - path: optional.env
        required: false
    environment:
      - NUM=1
      - FROM_SHELL
      - MISSING
      - OVER=env
  b:
    image: x
    env_file: a.env
    environment:
      N: 1
      F: 0.5
      B: true
      E: ""
      NULLED:
      FROM_SHELL: ~
"#,
            ),
            ("a.env", "OVER=file\nFILE_ONLY=yes\n"),
        ],
        &[("FROM_SHELL", "sh")],
    )
    .unwrap();
    let a = svc(&l.project, "a");
    assert_eq!(
        a.environment,
        env_map(&[
            ("NUM", "1"),
            ("FROM_SHELL", "sh"),
            ("OVER", "env"),
            ("FILE_ONLY", "yes")
        ])
    );
    assert_eq!(a.env_file.len(), 2);
    assert!(!a.env_file[1].required);
    assert_eq!(a.env_file[0].path, "/proj/a.env");
    let b = svc(&l.project, "b");
    assert_eq!(
        b.environment,
        env_map(&[
            ("N", "1"),
            ("F", "0.5"),
            ("B", "true"),
            ("E", ""),
            ("FROM_SHELL", "sh"),
            ("OVER", "file"),
            ("FILE_ONLY", "yes")
        ])
    );
}

#[test]
fn missing_required_env_file() {
    let e = load_err("services:\n  a:\n    image: x\n    env_file: nope.env\n");
    assert_eq!(e, "/proj/compose.yaml:4: services.a.env_file[0]: cannot read env file /proj/nope.env: no such file");
}

#[test]
fn depends_on_forms() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    depends_on: [b]
  b:
    image: x
    depends_on:
      c:
        condition: service_healthy
        restart: true
      d:
        condition: service_completed_successfully
        required: false
  c: {image: x}
  d: {image: x}
"#,
    );
    assert_eq!(svc(&p, "a").depends_on["b"].condition, "service_started");
    let b = &svc(&p, "b").depends_on;
    assert_eq!(b["c"].condition, "service_healthy");
    assert!(b["c"].restart);
    assert!(!b["d"].required);
}

#[test]
fn depends_on_errors() {
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    depends_on: [ghost]\n"),
        "/proj/compose.yaml:4: services.a.depends_on: depends on undefined service \"ghost\""
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n"),
        "/proj/compose.yaml:4: services.a.depends_on: dependency cycle: a -> b -> c -> a"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: service_up}\n  b: {image: x}\n"),
        "/proj/compose.yaml:5: services.a.depends_on.b.condition: invalid value \"service_up\"; expected one of: service_started, service_healthy, service_completed_successfully"
    );
}

#[test]
fn networks_and_default_network() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    networks:
      front:
        aliases: [web]
        ipv4_address: 10.0.0.5
      back:
  b:
    image: x
    networks: [back]
  c:
    image: x
  d:
    image: x
    network_mode: host
networks:
  front:
    driver: bridge
    ipam:
      driver: default
      config:
        - subnet: 10.0.0.0/24
          gateway: 10.0.0.1
          ip_range: 10.0.0.0/25
  back:
    internal: true
    attachable: true
    labels: [a=b]
  outside:
    external: true
    name: corp
"#,
    );
    let a = svc(&p, "a");
    assert_eq!(a.networks["front"].aliases, ["web"]);
    assert_eq!(
        a.networks["front"].ipv4_address.as_deref(),
        Some("10.0.0.5")
    );
    assert!(a.networks.contains_key("back"));
    assert!(svc(&p, "c").networks.contains_key("default"));
    assert!(svc(&p, "d").networks.is_empty());
    assert_eq!(p.networks["default"].name, "proj_default");
    assert_eq!(p.networks["front"].name, "proj_front");
    let ipam = p.networks["front"].ipam.as_ref().unwrap();
    assert_eq!(ipam.config[0].subnet.as_deref(), Some("10.0.0.0/24"));
    assert!(p.networks["back"].internal && p.networks["back"].attachable);
    assert_eq!(p.networks["outside"].name, "corp");
    assert!(p.networks["outside"].external);
}

#[test]
fn undefined_network() {
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    networks: [nope]\n"),
        "/proj/compose.yaml:4: services.a.networks: network \"nope\" is not defined in the top-level networks"
    );
    assert_eq!(
        load_err(
            "services:\n  a:\n    image: x\n    network_mode: host\n    networks: [default]\n"
        ),
        "/proj/compose.yaml:5: services.a.networks: network_mode and networks cannot both be set"
    );
}

#[test]
fn healthcheck_forms() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost"]
      interval: 1m30s
      timeout: 10s
      retries: 3
      start_period: 40s
      start_interval: 500ms
  b:
    image: x
    healthcheck:
      test: curl -f localhost || exit 1
  c:
    image: x
    healthcheck:
      test: ["NONE"]
  d:
    image: x
    healthcheck:
      disable: true
"#,
    );
    let a = svc(&p, "a").healthcheck.as_ref().unwrap();
    assert_eq!(a.test[0], "CMD");
    assert_eq!(a.interval, Some(Dur(Duration::from_secs(90))));
    assert_eq!(a.start_interval, Some(Dur(Duration::from_millis(500))));
    assert_eq!(a.retries, Some(3));
    assert_eq!(
        svc(&p, "b").healthcheck.as_ref().unwrap().test,
        ["CMD-SHELL", "curl -f localhost || exit 1"]
    );
    assert!(svc(&p, "c").healthcheck.as_ref().unwrap().disable);
    assert!(svc(&p, "d").healthcheck.as_ref().unwrap().disable);
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    healthcheck:\n      test: [curl]\n"),
        "/proj/compose.yaml:5: services.a.healthcheck.test: expected [\"CMD\", args...], [\"CMD-SHELL\", command], [\"NONE\"] or a command string"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    healthcheck:\n      interval: 5 minutes\n"),
        "/proj/compose.yaml:5: services.a.healthcheck.interval: invalid duration \"5 minutes\": use e.g. 500ms, 10s, 1m30s"
    );
}

#[test]
fn deploy_section() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    deploy:
      mode: replicated
      replicas: 2
      endpoint_mode: dnsrr
      labels: {com.example: x}
      resources:
        limits: {cpus: "0.50", memory: 512M, pids: 100}
        reservations: {cpus: 0.25, memory: 1gb}
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 30s, max_failure_ratio: 0.3, order: start-first}
      rollback_config: {parallelism: 1, order: stop-first}
      placement:
        constraints: [node.role == worker]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 1
"#,
    );
    let d = svc(&p, "a").deploy.as_ref().unwrap();
    assert_eq!(d.replicas, Some(2));
    assert_eq!(d.endpoint_mode.as_deref(), Some("dnsrr"));
    let limits = d.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits.cpus, Some(0.5));
    assert_eq!(limits.memory, Some(512 << 20));
    assert_eq!(limits.pids, Some(100));
    let res = d.resources.as_ref().unwrap().reservations.as_ref().unwrap();
    assert_eq!(res.memory, Some(1 << 30));
    let rp = d.restart_policy.as_ref().unwrap();
    assert_eq!(rp.window, Some(Dur(Duration::from_secs(120))));
    assert_eq!(
        d.update_config.as_ref().unwrap().order.as_deref(),
        Some("start-first")
    );
    assert_eq!(
        d.placement.as_ref().unwrap().preferences[0].spread,
        "node.labels.zone"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    deploy:\n      mode: everywhere\n"),
        "/proj/compose.yaml:5: services.a.deploy.mode: invalid value \"everywhere\"; expected one of: replicated, global, replicated-job, global-job"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    scale: 2\n    deploy:\n      replicas: 3\n"),
        "/proj/compose.yaml:4: services.a.scale: scale 2 differs from deploy.replicas 3"
    );
}

#[test]
fn secrets_and_configs() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    secrets:
      - db_pass
      - source: api_key
        target: /run/key
        uid: "1000"
        gid: "1000"
        mode: 0440
    configs:
      - source: conf
        mode: "0644"
secrets:
  db_pass: {file: ./secrets/db.txt}
  api_key: {environment: API_KEY}
configs:
  conf: {content: "hello"}
"#,
    );
    let a = svc(&p, "a");
    assert_eq!(a.secrets[0].source, "db_pass");
    assert_eq!(a.secrets[1].target.as_deref(), Some("/run/key"));
    assert_eq!(a.configs[0].mode, Some(0o644));
    // `0440` is octal, as in Compose (YAML 1.2 reads it as a string).
    assert_eq!(a.secrets[1].mode, Some(0o440));
    assert_eq!(
        p.secrets["db_pass"].file.as_deref(),
        Some("/proj/secrets/db.txt")
    );
    assert_eq!(p.secrets["db_pass"].name, "proj_db_pass");
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    secrets: [nope]\n"),
        "/proj/compose.yaml:4: services.a.secrets[0]: secret \"nope\" is not defined in the top-level secrets"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\nsecrets:\n  s: {file: a, content: b}\n"),
        "/proj/compose.yaml:5: secrets.s: set exactly one of file, environment, content or external"
    );
}

#[test]
fn many_small_attributes() {
    let p = load_one(
        r#"
services:
  a:
    image: x
    container_name: the-a
    hostname: h
    user: "1000:1000"
    working_dir: /w
    labels: [a=1, b=2]
    logging: {driver: syslog, options: {tag: x}}
    tmpfs: /run
    read_only: true
    privileged: yes
    init: true
    tty: true
    stdin_open: true
    security_opt: [no-new-privileges:true]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    stop_signal: SIGINT
    stop_grace_period: 1m
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: 40000}
    sysctls: [net.core.somaxconn=1024]
    extra_hosts:
      - "somehost:162.242.195.82"
      - "other=10.0.0.1"
      - "v6:::1"
    pids_limit: 100
    shm_size: 64m
    scale: 1
    pull_policy: always
    platform: linux/amd64
    expose: ["3000", "4000/udp"]
    restart: unless-stopped
    dns: 8.8.8.8
  b:
    image: x
    tmpfs: [/a, /b]
    extra_hosts: {h: 1.2.3.4, m: [1.1.1.1, 2.2.2.2]}
    sysctls: {net.ipv4.ip_forward: 1}
    restart: "on-failure:3"
"#,
    );
    let a = svc(&p, "a");
    assert_eq!(a.container_name.as_deref(), Some("the-a"));
    assert_eq!(a.labels, env_map(&[("a", "1"), ("b", "2")]));
    assert_eq!(a.tmpfs, ["/run"]);
    assert!(a.read_only && a.privileged && a.tty && a.stdin_open);
    assert_eq!(a.init, Some(true));
    assert_eq!(a.stop_grace_period, Some(Dur(Duration::from_secs(60))));
    assert_eq!(
        a.ulimits["nproc"],
        Ulimit {
            soft: 65535,
            hard: 65535
        }
    );
    assert_eq!(
        a.ulimits["nofile"],
        Ulimit {
            soft: 20000,
            hard: 40000
        }
    );
    assert_eq!(a.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(a.extra_hosts["somehost"], ["162.242.195.82"]);
    assert_eq!(a.extra_hosts["other"], ["10.0.0.1"]);
    assert_eq!(a.extra_hosts["v6"], ["::1"]);
    assert_eq!(a.shm_size, Some(64 << 20));
    assert_eq!(a.scale, Some(1));
    assert_eq!(a.dns, ["8.8.8.8"]);
    let b = svc(&p, "b");
    assert_eq!(b.tmpfs, ["/a", "/b"]);
    assert_eq!(b.extra_hosts["m"], ["1.1.1.1", "2.2.2.2"]);
    assert_eq!(b.sysctls["net.ipv4.ip_forward"], "1");
    assert_eq!(b.restart.as_deref(), Some("on-failure:3"));
}

#[test]
fn value_errors() {
    let cases = [
        ("    restart: sometimes\n", "4: services.a.restart: invalid restart policy \"sometimes\"; expected no, always, on-failure[:N] or unless-stopped"),
        ("    read_only: maybe\n", "4: services.a.read_only: expected a boolean, got \"maybe\""),
        ("    pids_limit: lots\n", "4: services.a.pids_limit: expected a whole number, got \"lots\""),
        ("    shm_size: 12q\n", "4: services.a.shm_size: invalid size \"12q\": use a number with an optional unit b, k, m or g (e.g. 64m)"),
        ("    environment: 5\n", "4: services.a.environment: expected a list of KEY=VALUE or a mapping, got a number"),
        ("    ulimits:\n      nofile: {soft: 10, hard: 5}\n", "5: services.a.ulimits.nofile: soft limit 10 is above hard limit 5"),
        ("    expose: [\"http\"]\n", "4: services.a.expose[0]: invalid port \"http\": expected PORT[-PORT][/PROTOCOL]"),
        ("    image: [a]\n", "4: services.a.image: expected a string, got a list"),
    ];
    for (extra, want) in cases {
        let yaml = format!("services:\n  a:\n    command: x\n{extra}");
        let yaml = if extra.contains("image") {
            yaml
        } else {
            yaml.replace("command: x", "image: x")
        };
        assert_eq!(load_err(&yaml), format!("/proj/compose.yaml:{want}"));
    }
}

#[test]
fn unknown_keys() {
    assert_eq!(
        load_err("services:\n  web:\n    image: x\n    prots: [\"80\"]\n"),
        "/proj/compose.yaml:4: services.web.prots: unknown key \"prots\" (did you mean \"ports\"?)"
    );
    assert_eq!(
        load_err("services:\n  web:\n    image: x\n    healthcheck:\n      tset: [CMD, x]\n"),
        "/proj/compose.yaml:5: services.web.healthcheck.tset: unknown key \"tset\" (did you mean \"test\"?)"
    );
    assert_eq!(
        load_err("servics:\n  web:\n    image: x\n"),
        "/proj/compose.yaml:1: servics: unknown key \"servics\"; expected one of: version, name, services, networks, volumes, secrets, configs"
    );
    assert_eq!(
        load_err("services:\n  web:\n    image: x\n    logging:\n      drv: x\n"),
        "/proj/compose.yaml:5: services.web.logging.drv: unknown key \"drv\"; expected one of: driver, options"
    );
    // x- extensions pass anywhere a mapping allows them.
    let p = load_one("x-top: 1\nservices:\n  web:\n    image: x\n    x-meta: {a: 1}\n    deploy:\n      x-y: 2\n  x-not-a-service: {}\nnetworks:\n  n:\n    x-z: 3\n");
    assert_eq!(p.services.len(), 1);
}

#[test]
fn unsupported_keys() {
    assert_eq!(
        load_err("services:\n  web:\n    image: x\n    gpus: all\n"),
        "/proj/compose.yaml:4: services.web.gpus: \"gpus\" is a valid compose attribute that shoal does not support yet"
    );
    let l = load_files(
        &[(
            "compose.yaml",
            "services:\n  web:\n    image: x\n    develop:\n      watch: []\n",
        )],
        &[],
    )
    .unwrap();
    assert!(l
        .warnings
        .iter()
        .any(|w| w.contains("services.web.develop")));
    assert!(UNSUPPORTED_SERVICE_KEYS
        .iter()
        .any(|(k, _)| *k == "blkio_config"));
}

#[test]
fn service_needs_image_or_build() {
    assert_eq!(
        load_err("services:\n  web:\n    restart: always\n"),
        "/proj/compose.yaml:2: services.web: a service needs an image or a build section"
    );
}

// ---------------------------------------------------------------------------------------------
// project name, files, version

#[test]
fn project_name_precedence() {
    let files = [(
        "compose.yaml",
        "name: From_File\nservices:\n  a: {image: x}\n",
    )];
    let fs = fs(&files);
    let mut o = opts(&[]);
    assert_eq!(load_with(&o, &fs).unwrap().project.name, "from_file");
    o.environment
        .insert("COMPOSE_PROJECT_NAME".into(), "Env.Name".into());
    assert_eq!(load_with(&o, &fs).unwrap().project.name, "envname");
    o.project_name = Some("cli".into());
    assert_eq!(load_with(&o, &fs).unwrap().project.name, "cli");
    let p = load_files(&[("compose.yaml", "services:\n  a: {image: x}\n")], &[]).unwrap();
    assert_eq!(p.project.name, "proj");
}

#[test]
fn default_files_and_override() {
    let l = load_files(
        &[
            ("docker-compose.yml", "services:\n  a: {image: old}\n"),
            (
                "docker-compose.override.yml",
                "services:\n  a: {image: new}\n",
            ),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(svc(&l.project, "a").image.as_deref(), Some("new"));
    // compose.yaml is preferred.
    let l = load_files(
        &[
            ("compose.yaml", "services:\n  a: {image: preferred}\n"),
            ("docker-compose.yml", "services:\n  a: {image: old}\n"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(svc(&l.project, "a").image.as_deref(), Some("preferred"));
    let e = load_files(&[], &[]).unwrap_err().to_string();
    assert!(e.starts_with("no compose file found in /proj"), "{e}");
}

#[test]
fn version_is_accepted() {
    let l = load_files(
        &[(
            "compose.yaml",
            "version: \"3.8\"\nservices:\n  a: {image: x}\n",
        )],
        &[],
    )
    .unwrap();
    assert!(l.warnings.iter().any(|w| w.contains("version")));
}

// ---------------------------------------------------------------------------------------------
// merging several files

fn load_pair(base: &str, over: &str) -> Result<Project, ComposeError> {
    let fs = fs(&[("compose.yaml", base), ("over.yaml", over)]);
    let mut o = opts(&[]);
    o.files = vec!["compose.yaml".into(), "over.yaml".into()];
    load_with(&o, &fs).map(|l| l.project)
}

#[test]
fn merge_rules() {
    let p = load_pair(
        r#"
services:
  web:
    image: a
    command: [echo, a]
    ports: ["8080:80", "9000:90"]
    environment: [A=1, B=2]
    labels: {x: "1"}
    volumes: ["./a:/data", "v:/keep"]
    cap_add: [NET_ADMIN]
    healthcheck: {test: [CMD, a], interval: 5s}
    depends_on: [db]
  db: {image: db}
volumes:
  v: {}
"#,
        r#"
services:
  web:
    image: b
    command: [echo, b]
    ports: ["8443:443", "9000:90"]
    environment: {B: "3", C: "4"}
    labels: [y=2]
    volumes: ["./b:/data"]
    cap_add: [NET_ADMIN, SYS_TIME]
    healthcheck: {test: [CMD, b]}
    depends_on:
      cache: {condition: service_healthy}
  cache: {image: cache}
"#,
    )
    .unwrap();
    let web = svc(&p, "web");
    assert_eq!(web.image.as_deref(), Some("b"));
    assert_eq!(web.command.as_deref().unwrap(), ["echo", "b"]);
    let ports: Vec<String> = web
        .ports
        .iter()
        .map(|p| format!("{}:{}", p.published.as_deref().unwrap_or(""), p.target))
        .collect();
    assert_eq!(ports, ["8080:80", "9000:90", "8443:443"]);
    assert_eq!(
        web.environment,
        env_map(&[("A", "1"), ("B", "3"), ("C", "4")])
    );
    assert_eq!(web.labels, env_map(&[("x", "1"), ("y", "2")]));
    let vols: Vec<String> = web
        .volumes
        .iter()
        .map(|v| format!("{}:{}", v.source.as_deref().unwrap_or(""), v.target))
        .collect();
    assert_eq!(vols, ["/proj/b:/data", "v:/keep"]);
    assert_eq!(web.cap_add, ["NET_ADMIN", "SYS_TIME"]);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "b"]);
    assert_eq!(hc.interval, Some(Dur(Duration::from_secs(5))));
    assert_eq!(web.depends_on.keys().collect::<Vec<_>>(), ["cache", "db"]);
    assert_eq!(web.depends_on["cache"].condition, "service_healthy");
}

#[test]
fn reset_and_override_tags() {
    let p = load_pair(
        r#"
services:
  app:
    image: myapp
    ports: ["8080:80"]
    environment: {FOO: BAR, KEEP: "1"}
    command: run
    build: .
  gone: {image: x}
networks:
  n1: {}
"#,
        r#"
services:
  app:
    ports: !reset []
    environment:
      FOO: !reset null
    build: !reset
  gone: !reset
  other:
    image: o
    labels: !override {only: this}
networks: !override
  n2: {}
"#,
    )
    .unwrap();
    let app = svc(&p, "app");
    assert!(app.ports.is_empty());
    assert_eq!(app.environment, env_map(&[("KEEP", "1")]));
    assert!(app.build.is_none());
    assert!(!p.services.contains_key("gone"));
    assert!(p.networks.contains_key("n2") && !p.networks.contains_key("n1"));

    let p = load_pair(
        "services:\n  app:\n    image: a\n    ports: [\"8080:80\"]\n",
        "services:\n  app:\n    ports: !override [\"8443:443\"]\n",
    )
    .unwrap();
    let ports: Vec<u16> = svc(&p, "app").ports.iter().map(|p| p.target).collect();
    assert_eq!(ports, [443]);
}

#[test]
fn semantic_error_in_override_file_is_located_there() {
    let e = load_pair(
        "services:\n  app:\n    image: a\n",
        "services:\n  app:\n    ports:\n      - \"bad\"\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/over.yaml:4: services.app.ports[0]: invalid port \"bad\": container port \"bad\" is not a port number (1-65535)"
    );
}

// ---------------------------------------------------------------------------------------------
// extends

#[test]
fn extends_same_file_and_chain() {
    let p = load_one(
        r#"
services:
  base:
    image: base
    environment: {A: "1"}
    ports: ["80"]
  mid:
    extends: base
    environment: {B: "2"}
  top:
    extends:
      service: mid
    environment: {A: "override"}
    ports: ["81"]
"#,
    );
    let top = svc(&p, "top");
    assert_eq!(top.image.as_deref(), Some("base"));
    assert_eq!(top.environment, env_map(&[("A", "override"), ("B", "2")]));
    assert_eq!(
        top.ports.iter().map(|p| p.target).collect::<Vec<_>>(),
        [80, 81]
    );
    assert_eq!(
        svc(&p, "mid").environment,
        env_map(&[("A", "1"), ("B", "2")])
    );
}

#[test]
fn extends_other_file_rebases_paths() {
    let l = load_files(
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    extends:\n      file: common/base.yaml\n      service: app\n    image: mine\n",
            ),
            (
                "common/base.yaml",
                "services:\n  app:\n    image: theirs\n    build: ./ctx\n    volumes: [\"./data:/data\"]\n    env_file: app.env\n    extends: {file: ../deeper.yaml, service: root}\n",
            ),
            ("common/app.env", "FROM_FILE=1\n"),
            ("deeper.yaml", "services:\n  root:\n    image: r\n    labels: {root: \"yes\"}\n"),
        ],
        &[],
    )
    .unwrap();
    let web = svc(&l.project, "web");
    assert_eq!(web.image.as_deref(), Some("mine"));
    assert_eq!(web.build.as_ref().unwrap().context, "/proj/common/ctx");
    assert_eq!(web.volumes[0].source.as_deref(), Some("/proj/common/data"));
    assert_eq!(web.environment["FROM_FILE"], "1");
    assert_eq!(web.labels["root"], "yes");
}

#[test]
fn extends_errors() {
    assert_eq!(
        load_err("services:\n  a:\n    extends: b\n  b:\n    extends: c\n  c:\n    extends: a\n"),
        "/proj/compose.yaml:3: services.a.extends: extends cycle: a -> b -> c -> a"
    );
    assert_eq!(
        load_err("services:\n  a:\n    extends: ghost\n"),
        "/proj/compose.yaml:3: services.a.extends: service \"ghost\" not found in /proj/compose.yaml"
    );
    let e = load_files(
        &[(
            "compose.yaml",
            "services:\n  a:\n    extends: {file: nope.yaml, service: x}\n",
        )],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("/proj/nope.yaml: cannot read"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// include

#[test]
fn include_forms() {
    let l = load_files(
        &[
            (
                "compose.yaml",
                "include:\n  - lib/db.yaml\n  - path: [cache/c.yaml]\n    env_file: cache/vars.env\nservices:\n  web:\n    image: web\n    depends_on: [db, cache]\n",
            ),
            ("lib/db.yaml", "services:\n  db:\n    image: postgres:${PG:-16}\n    volumes: [\"./init:/init\", \"pg:/var/lib\"]\nvolumes:\n  pg: {}\n"),
            ("lib/.env", "PG=15\n"),
            ("cache/c.yaml", "services:\n  cache:\n    image: redis:${REDIS}\n"),
            ("cache/vars.env", "REDIS=7\n"),
        ],
        &[],
    )
    .unwrap();
    let p = &l.project;
    assert_eq!(svc(p, "db").image.as_deref(), Some("postgres:15"));
    assert_eq!(
        svc(p, "db").volumes[0].source.as_deref(),
        Some("/proj/lib/init")
    );
    assert_eq!(svc(p, "cache").image.as_deref(), Some("redis:7"));
    assert!(p.volumes.contains_key("pg"));
}

#[test]
fn include_conflicts_and_cycles() {
    let e = load_files(
        &[
            (
                "compose.yaml",
                "include: [other.yaml]\nservices:\n  db: {image: mine}\n",
            ),
            ("other.yaml", "services:\n  db: {image: theirs}\n"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/compose.yaml:3: services.db: also defined by the included file /proj/other.yaml"
    );
    let e = load_files(
        &[
            ("compose.yaml", "include: [a.yaml]\nservices: {}\n"),
            ("a.yaml", "include: [compose.yaml]\nservices: {}\n"),
        ],
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("include cycle"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// profiles

const PROFILES: &str = r#"
services:
  web: {image: w}
  debug:
    image: d
    profiles: [debug]
  tools:
    image: t
    profiles: [tools]
    depends_on: [helper]
  helper:
    image: h
    profiles: [never]
"#;

fn active(o: LoadOptions) -> Vec<String> {
    let fs = fs(&[("compose.yaml", PROFILES)]);
    load_with(&o, &fs)
        .unwrap()
        .project
        .services
        .keys()
        .cloned()
        .collect()
}

#[test]
fn profiles() {
    assert_eq!(active(opts(&[])), ["web"]);
    let mut o = opts(&[]);
    o.profiles = vec!["debug".into()];
    assert_eq!(active(o), ["debug", "web"]);
    // A dependency of an active service is activated.
    assert_eq!(
        active(opts(&[("COMPOSE_PROFILES", "tools")])),
        ["helper", "tools", "web"]
    );
    assert_eq!(
        active(opts(&[("COMPOSE_PROFILES", "*")])),
        ["debug", "helper", "tools", "web"]
    );
    let mut o = opts(&[]);
    o.services = vec!["debug".into()];
    assert_eq!(active(o), ["debug", "web"]);
    let mut o = opts(&[]);
    o.services = vec!["nope".into()];
    let fs = fs(&[("compose.yaml", PROFILES)]);
    assert!(load_with(&o, &fs)
        .unwrap_err()
        .to_string()
        .contains("no such service: \"nope\""));
}

// ---------------------------------------------------------------------------------------------
// locating lines

#[test]
fn locate_paths() {
    let text = "services:\n  web:\n    image: x\n    ports:\n      - \"1\"\n      - target: 2\n        published: \"3\"\n      - \"4\"\n  db:\n    ports:\n      - \"5\"\n    env: {a: 1}\n";
    let line = |p: &str| yaml::locate(text, p);
    assert_eq!(line("services.web.ports[0]"), Some((5, 3)));
    assert_eq!(line("services.web.ports[1].published"), Some((7, 4)));
    assert_eq!(line("services.web.ports[2]"), Some((8, 3)));
    assert_eq!(line("services.db.ports[0]"), Some((11, 3)));
    // Not there, or in flow style: the deepest line found.
    assert_eq!(line("services.db.image"), Some((9, 2)));
    assert_eq!(line("services.db.env.a"), Some((12, 3)));
    assert_eq!(line("volumes"), None);
}

// ---------------------------------------------------------------------------------------------
// output and round trips

fn reload(p: &Project, extra: &[(&str, &str)]) -> Project {
    let text = to_yaml(p);
    let mut files = vec![("compose.yaml", text.as_str())];
    files.extend_from_slice(extra);
    match load_files(&files, &[]) {
        Ok(l) => l.project,
        Err(e) => panic!("{e}\n{text}"),
    }
}

#[test]
fn durations_print_like_compose() {
    for (d, s) in [
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_secs(3600), "1h0m0s"),
        (Duration::ZERO, "0s"),
        (Duration::from_micros(1500), "1.5ms"),
    ] {
        assert_eq!(Dur(d).to_string(), s);
        assert_eq!(convert::parse_duration(s), Ok(d));
    }
}

#[test]
fn config_output_is_canonical() {
    let p = load_one(
        "services:\n  web:\n    image: nginx\n    ports: [\"8080:80\"]\n    environment: [A=1]\n    healthcheck:\n      test: curl x\n      interval: 90s\n",
    );
    let want = r#"name: proj
services:
  web:
    image: nginx
    environment:
      A: '1'
    ports:
    - target: 80
      published: '8080'
      protocol: tcp
      mode: ingress
    networks:
      default: {}
    healthcheck:
      test:
      - CMD-SHELL
      - curl x
      interval: 1m30s
networks:
  default:
    name: proj_default
"#;
    assert_eq!(to_yaml(&p), want);
}

#[test]
fn realistic_files_round_trip() {
    for name in ["wordpress.yaml", "full.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/compose/testdata")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let env = [("app.env", "APP_MODE=prod\n")];
        let mut files = vec![("compose.yaml", text.as_str())];
        files.extend_from_slice(&env);
        let l = load_files(&files, &[("HOME", "/home/u"), ("API_KEY", "k")])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reload(&l.project, &env), l.project, "{name}");
    }
}

mod roundtrip {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::option;
    use proptest::prelude::*;

    fn ident() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_]{0,6}"
    }

    fn text() -> impl Strategy<Value = String> {
        // Printable ASCII, `$` and quotes included.
        "[ -~]{0,12}"
    }

    fn dur() -> impl Strategy<Value = Dur> {
        (0u64..10_000_000).prop_map(|ms| Dur(Duration::from_millis(ms)))
    }

    fn port() -> impl Strategy<Value = Port> {
        (
            1u16..,
            option::of((1u16..).prop_map(|p| p.to_string())),
            option::of(Just("127.0.0.1".to_string())),
            proptest::sample::select(vec!["tcp", "udp"]),
            proptest::sample::select(vec!["ingress", "host"]),
        )
            .prop_map(|(target, published, host_ip, protocol, mode)| Port {
                name: None,
                target,
                published,
                host_ip,
                protocol: protocol.into(),
                app_protocol: None,
                mode: mode.into(),
            })
    }

    fn volume() -> impl Strategy<Value = ServiceVolume> {
        (ident(), any::<bool>(), 0..3u8).prop_map(|(name, ro, kind)| match kind {
            0 => ServiceVolume {
                kind: "bind".into(),
                source: Some(format!("/host/{name}")),
                target: format!("/c/{name}"),
                read_only: ro,
                bind: Some(BindOptions {
                    create_host_path: ro,
                    ..Default::default()
                }),
                ..Default::default()
            },
            1 => ServiceVolume {
                kind: "volume".into(),
                source: Some("data".into()),
                target: format!("/v/{name}"),
                read_only: ro,
                ..Default::default()
            },
            _ => ServiceVolume {
                kind: "tmpfs".into(),
                target: format!("/t/{name}"),
                tmpfs: Some(TmpfsOptions {
                    size: Some(1 << 20),
                    mode: Some(0o755),
                }),
                ..Default::default()
            },
        })
    }

    fn service() -> impl Strategy<Value = Service> {
        (
            (
                ident(),
                option::of(vec(text(), 0..4)),
                btree_map("[A-Z][A-Z0-9_]{0,5}", text(), 0..4),
                vec(port(), 0..3),
                vec(volume(), 0..3),
                option::of(proptest::sample::select(vec![
                    "no",
                    "always",
                    "on-failure:2",
                    "unless-stopped",
                ])),
            ),
            (
                option::of((dur(), dur(), 0u64..10)),
                option::of((1u64..5, option::of(0.5f64..4.0), option::of(1i64..1 << 30))),
                btree_map("[a-z.]{1,8}", text(), 0..3),
                any::<bool>(),
                option::of(dur()),
                option::of(proptest::sample::select(vec!["SIGTERM", "SIGINT"])),
            ),
            (
                vec(
                    (option::of("/run/[a-z]{1,5}"), option::of(0u32..0o777)),
                    0..3,
                ),
                btree_map("[a-z]{1,6}", (0i64..100, 100i64..200), 0..3),
                btree_map("[a-z]{1,6}", vec("10\\.0\\.0\\.[0-9]", 1..3), 0..3),
                vec("/[a-z]{1,6}", 0..3),
                option::of((ident(), btree_map(ident(), text(), 0..3))),
                option::of(vec(text(), 0..3)),
                option::of(text()),
            ),
        )
            .prop_map(
                |(
                    (image, command, environment, ports, volumes, restart),
                    (hc, deploy, labels, ro, grace, signal),
                    (secrets, ulimits, extra_hosts, tmpfs, logging, entrypoint, user),
                )| Service {
                    secrets: secrets
                        .into_iter()
                        .map(|(target, mode)| FileRef {
                            source: "s".into(),
                            target,
                            uid: None,
                            gid: None,
                            mode,
                        })
                        .collect(),
                    ulimits: ulimits
                        .into_iter()
                        .map(|(k, (soft, hard))| (k, Ulimit { soft, hard }))
                        .collect(),
                    extra_hosts,
                    tmpfs,
                    logging: logging.map(|(driver, options)| Logging {
                        driver: Some(driver),
                        options,
                    }),
                    entrypoint,
                    user,
                    image: Some(format!("{image}:latest")),
                    command,
                    environment,
                    ports,
                    volumes,
                    restart: restart.map(String::from),
                    healthcheck: hc.map(|(interval, timeout, retries)| Healthcheck {
                        test: vec!["CMD".into(), "true".into()],
                        interval: Some(interval),
                        timeout: Some(timeout),
                        retries: Some(retries),
                        ..Default::default()
                    }),
                    deploy: deploy.map(|(replicas, cpus, memory)| Deploy {
                        replicas: Some(replicas),
                        resources: Some(Resources {
                            limits: Some(ResourceSpec {
                                cpus,
                                memory,
                                pids: None,
                            }),
                            reservations: None,
                        }),
                        ..Default::default()
                    }),
                    labels,
                    read_only: ro,
                    stop_grace_period: grace,
                    stop_signal: signal.map(String::from),
                    networks: [("default".to_string(), ServiceNetwork::default())].into(),
                    ..Default::default()
                },
            )
    }

    fn network() -> impl Strategy<Value = Network> {
        (
            "[a-z]{1,8}",
            option::of(Just("bridge".to_string())),
            any::<bool>(),
            any::<bool>(),
            option::of((1u8..250, btree_map(ident(), text(), 0..2))),
            btree_map("[a-z.]{1,6}", text(), 0..2),
        )
            .prop_map(
                |(name, driver, internal, attachable, ipam, labels)| Network {
                    name,
                    driver,
                    internal,
                    attachable,
                    ipam: ipam.map(|(n, options)| Ipam {
                        driver: None,
                        config: vec![IpamPool {
                            subnet: Some(format!("10.{n}.0.0/16")),
                            gateway: Some(format!("10.{n}.0.1")),
                            ..Default::default()
                        }],
                        options,
                    }),
                    labels,
                    ..Default::default()
                },
            )
    }

    fn project() -> impl Strategy<Value = Project> {
        (
            btree_map(ident(), service(), 1..4),
            btree_map("n[a-z]{0,5}", network(), 0..3),
            btree_map(ident(), btree_map(ident(), text(), 0..2), 0..2),
            option::of(text()),
        )
            .prop_map(|(services, mut networks, volumes, content)| {
                networks.insert(
                    "default".to_string(),
                    Network {
                        name: "proj_default".into(),
                        ..Default::default()
                    },
                );
                let mut volumes: BTreeMap<String, Volume> = volumes
                    .into_iter()
                    .map(|(k, driver_opts)| {
                        let v = Volume {
                            name: format!("vol_{k}"),
                            driver: Some("local".into()),
                            driver_opts,
                            ..Default::default()
                        };
                        (k, v)
                    })
                    .collect();
                volumes.insert(
                    "data".to_string(),
                    Volume {
                        name: "proj_data".into(),
                        ..Default::default()
                    },
                );
                Project {
                    name: "proj".into(),
                    services,
                    networks,
                    volumes,
                    secrets: [(
                        "s".to_string(),
                        FileObject {
                            name: "proj_s".into(),
                            environment: Some("S".into()),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    configs: content
                        .map(|c| {
                            let o = FileObject {
                                name: "proj_c".into(),
                                content: Some(c),
                                ..Default::default()
                            };
                            [("c".to_string(), o)].into()
                        })
                        .unwrap_or_default(),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn to_yaml_loads_back_to_the_same_project(p in project()) {
            let text = to_yaml(&p);
            let back = load_files(&[("compose.yaml", &text)], &[])
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back.project, p);
        }
    }
}

#[test]
fn merge_key_rounds_are_capped() {
    let chain = |levels: usize| {
        let mut yaml = String::from("x-a0: &a0 {image: x}\n");
        for i in 1..levels {
            yaml.push_str(&format!("x-a{i}: &a{i} {{<<: *a{}, x-l{i}: v}}\n", i - 1));
        }
        yaml.push_str(&format!("services:\n  s:\n    <<: *a{}\n", levels - 1));
        yaml
    };
    let p = load_one(&chain(40));
    assert_eq!(svc(&p, "s").image.as_deref(), Some("x"));
    // serde_yaml's apply_merge leaves the `<<` of merged-in mappings: it takes a few rounds.
    let file = Path::new("/proj/compose.yaml");
    let e = yaml::parse_capped(&chain(8), file, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/compose.yaml: merge keys (<<) still left after 1 rounds of merging"
    );
    assert!(yaml::parse_capped(&chain(8), file, 8).is_ok());
}

#[test]
fn compose_variables_from_dotenv() {
    let l = load_files(
        &[
            (
                "compose.yaml",
                "services:\n  a: {image: x}\n  b: {image: y, profiles: [extra]}\n",
            ),
            (
                ".env",
                "COMPOSE_PROJECT_NAME=fromdotenv\nCOMPOSE_PROFILES=extra\n",
            ),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(l.project.name, "fromdotenv");
    assert!(l.project.services.contains_key("b"));
}

#[test]
fn invalid_project_name() {
    let mut o = opts(&[]);
    o.project_name = Some("__".into());
    let e = load_with(&o, &fs(&[("compose.yaml", "services: {}\n")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/compose.yaml: name: invalid project name \"__\": use lowercase letters, digits, '_' and '-', starting with a letter or digit"
    );
}

#[test]
fn include_with_project_directory() {
    let l = load_files(
        &[
            (
                "compose.yaml",
                "include:\n  - path: ../shared/compose.yaml\n    project_directory: ../shared/root\nservices:\n  web: {image: w}\n",
            ),
            ("../shared/compose.yaml", "services:\n  side:\n    build: ./ctx\n    env_file: side.env\n"),
            ("../shared/root/side.env", "S=1\n"),
        ],
        &[],
    )
    .unwrap();
    let side = svc(&l.project, "side");
    assert_eq!(side.build.as_ref().unwrap().context, "/shared/root/ctx");
    assert_eq!(side.environment["S"], "1");
}

#[test]
fn long_syntax_round_trips_through_short_files() {
    // Every short form, printed in long form, loads back the same.
    let p = load_one(
        "services:\n  a:\n    image: x\n    command: echo $$HOME\n    ports: [\"8000-8001:80-81/udp\", \"9000\"]\n    volumes: [\"./d:/d:ro,z\", \"v:/v:nocopy\"]\n    environment: [A=$$1]\n    depends_on: [b]\n    secrets: [s]\n    extra_hosts: [\"h:1.2.3.4\"]\n    ulimits: {nproc: 5}\n  b:\n    image: y\n    healthcheck: {test: \"true\", interval: 1m}\nvolumes: {v: {}}\nsecrets: {s: {file: ./s.txt}}\n",
    );
    assert_eq!(svc(&p, "a").command.as_deref().unwrap(), ["echo", "$HOME"]);
    assert_eq!(reload(&p, &[]), p);
}

#[test]
fn empty_sections_in_an_override_add_nothing() {
    let p = load_pair("services:\n  a: {image: x}\n", "services:\nvolumes:\n").unwrap();
    assert!(p.services.contains_key("a"));
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    foo: 1\n"),
        "/proj/compose.yaml:4: services.a.foo: unknown key \"foo\"; not a compose attribute here"
    );
}

#[test]
fn default_file_in_a_parent_directory() {
    let fs = fs(&[("compose.yaml", "services:\n  a: {image: x, build: ./app}\n")]);
    let mut o = opts(&[]);
    o.working_dir = "/proj/app/src".into();
    let p = load_with(&o, &fs).unwrap().project;
    assert_eq!(p.name, "proj");
    assert_eq!(svc(&p, "a").build.as_ref().unwrap().context, "/proj/app");
}

#[test]
fn errors_in_included_files_name_them() {
    let e = load_files(
        &[
            (
                "compose.yaml",
                "include: [lib/db.yaml]\nservices:\n  web: {image: w}\n",
            ),
            (
                "lib/db.yaml",
                "services:\n  db:\n    image: x\n    ports:\n      - \"99999\"\n",
            ),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/lib/db.yaml:5: services.db.ports[0]: invalid port \"99999\": container port \"99999\" is not a port number (1-65535)"
    );
    let e = load_files(
        &[
            (
                "compose.yaml",
                "include: [lib/db.yaml]\nservices:\n  web: {image: w}\n",
            ),
            (
                "lib/db.yaml",
                "services:\n  db:\n    image: ${DB_IMAGE:?no image}\n",
            ),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/proj/lib/db.yaml:3: services.db.image: required variable DB_IMAGE is missing a value: no image"
    );
}

#[test]
fn resource_conflicts() {
    assert_eq!(
        load_err("services:\n  a: {image: x}\nnetworks:\n  n:\n    external: true\n    driver: overlay\n"),
        "/proj/compose.yaml:6: networks.n.driver: conflicting parameter \"driver\" for an external resource: only name is allowed"
    );
    assert_eq!(
        load_err("services:\n  a: {image: x}\nvolumes:\n  v:\n    external: true\n    driver_opts: {a: b}\n"),
        "/proj/compose.yaml:6: volumes.v.driver_opts: conflicting parameter \"driver_opts\" for an external resource: only name is allowed"
    );
    assert_eq!(
        load_err("services:\n  a:\n    image: x\n    container_name: only\n    deploy: {replicas: 2}\n"),
        "/proj/compose.yaml:4: services.a.container_name: a container name must be unique: it cannot be set with more than one replica"
    );
}

#[test]
fn compose_file_variable() {
    let fs = fs(&[
        ("a.yaml", "services:\n  a: {image: x}\n"),
        ("b.yaml", "services:\n  a: {image: y}\n"),
    ]);
    let p = load_with(&opts(&[("COMPOSE_FILE", "a.yaml:b.yaml")]), &fs)
        .unwrap()
        .project;
    assert_eq!(svc(&p, "a").image.as_deref(), Some("y"));
    let e = load_with(&opts(&[("COMPOSE_FILE", ":")]), &fs).unwrap_err();
    assert_eq!(e.to_string(), "no compose file given");
}

#[test]
fn blue_green_extensions_are_checked_where_they_are() {
    for (bad, what) in [
        (
            "update_config: {x-strategy: red-black}",
            "x-strategy: invalid value",
        ),
        (
            "update_config: {x-promote: later}",
            "x-promote: invalid value",
        ),
        ("update_config: {x-verify: [NONE]}", "x-verify: expected"),
        ("update_config: {x-drain: soon}", "x-drain"),
        (
            "rollback_config: {x-strategy: blue-green}",
            "rollback_config.x-strategy: a blue-green setting belongs under deploy.update_config",
        ),
    ] {
        let err = load_err(&format!(
            "services:\n  a:\n    image: x\n    deploy:\n      {bad}\n"
        ));
        assert!(err.contains(what), "{bad}: {err}");
    }
    let p = load_one(
        "services:\n  a:\n    image: x\n    deploy:\n      update_config: {x-verify: [CMD, test, -f, /ok]}\n",
    );
    let u = svc(&p, "a")
        .deploy
        .as_ref()
        .unwrap()
        .update_config
        .as_ref()
        .unwrap();
    assert_eq!(u.verify, ["CMD", "test", "-f", "/ok"]);
}
