use super::*;
use std::os::unix::fs::symlink;

fn dir_with(files: &[(&str, &str, u32)]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    for (name, body, mode) in files {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let canon = std::fs::canonicalize(d.path()).unwrap();
    (d, canon)
}

fn load(dir: &Path, name: &str, manifest: &str) -> Result<Script, String> {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, manifest).unwrap();
    let mut config = RunnerConfig::default();
    config.env.insert(
        "KICKSTAND_API_URL".into(),
        crate::EnvValue::literal("http://x"),
    );
    Script::load(dir, &p, &config)
}

const OK: &str = r#"
name = "s"
command = "s.sh"
[[args]]
name = "below"
type = "float"
min = 0
max = 100
default = 20
[[args]]
name = "mode"
type = "enum"
values = ["csv", "text"]
required = true
[[args]]
name = "token"
type = "string"
secret = true
[[args]]
name = "vehicle"
type = "string"
pattern = "[A-Z]{2}[0-9]+"
"#;

#[test]
fn a_valid_manifest_binds_arguments_to_flags_and_secrets_to_env() {
    let (_d, dir) = dir_with(&[("s.sh", "#!/bin/sh\n", 0o755)]);
    let s = load(&dir, "s", OK).unwrap();
    assert_eq!(s.scope, "operate");
    assert_eq!(s.max_concurrent, 1);
    let given: Map<String, Json> = serde_json::from_str(
        r#"{"mode": "csv", "token": "hunter2", "vehicle": "AB12", "below": "15.5"}"#,
    )
    .unwrap();
    let b = s.bind(&given).unwrap();
    assert_eq!(b.argv, ["--below=15.5", "--mode=csv", "--vehicle=AB12"]);
    assert_eq!(
        b.secret_env,
        [("KICKSTAND_SECRET_TOKEN".to_string(), "hunter2".to_string())]
    );
    assert_eq!(b.redacted["token"], "***");
    assert!(
        !serde_json::to_string(&b.redacted)
            .unwrap()
            .contains("hunter2")
    );
    // The default applies; the digest ignores secret values.
    let b2 = s
        .bind(
            &serde_json::from_str(
                r#"{"mode": "csv", "token": "other", "vehicle": "AB12", "below": 15.5}"#,
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(b.digest, b2.digest);
    let b3 = s
        .bind(&serde_json::from_str(r#"{"mode": "text"}"#).unwrap())
        .unwrap();
    assert_eq!(b3.argv, ["--below=20", "--mode=text"]);
    assert_ne!(b3.digest, b.digest);
}

#[test]
fn bad_arguments_are_refused_naming_the_argument() {
    let (_d, dir) = dir_with(&[("s.sh", "#!/bin/sh\n", 0o755)]);
    let s = load(&dir, "s", OK).unwrap();
    let cases = [
        (r#"{}"#, "args.mode", "required"),
        (r#"{"mode": "xml"}"#, "args.mode", "one of csv, text"),
        (r#"{"mode": 3}"#, "args.mode", "a string"),
        (
            r#"{"mode": "csv", "below": 101}"#,
            "args.below",
            "at most 100",
        ),
        (
            r#"{"mode": "csv", "below": "lots"}"#,
            "args.below",
            "a number",
        ),
        (r#"{"mode": "csv", "below": [1]}"#, "args.below", "a number"),
        (
            r#"{"mode": "csv", "vehicle": "ab12"}"#,
            "args.vehicle",
            "pattern",
        ),
        (
            r#"{"mode": "csv", "vehicle": "AB12; rm -rf /"}"#,
            "args.vehicle",
            "pattern",
        ),
        (
            r#"{"mode": "csv", "token": "a\u0000b"}"#,
            "args.token",
            "NUL",
        ),
        (r#"{"mode": "csv", "nope": 1}"#, "args.nope", "no argument"),
    ];
    for (given, field, reason) in cases {
        match s.bind(&serde_json::from_str(given).unwrap()) {
            Err(StartError::InvalidArg(f, r)) => {
                assert_eq!(f, field, "{given}");
                assert!(r.contains(reason), "{given}: {r}");
            }
            other => panic!("{given}: {other:?}"),
        }
    }
}

#[test]
fn garbage_and_unsafe_manifests_are_refused_with_a_reason() {
    let (_d, dir) = dir_with(&[
        ("s.sh", "#!/bin/sh\n", 0o755),
        ("plain.txt", "not executable", 0o644),
    ]);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("evil.sh");
    std::fs::write(&target, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink(&target, dir.join("link.sh")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let cases = [
        ("name = ", "line 1: "),
        ("\u{0}\u{1}garbage", "line 1: "),
        (
            "name = \"s\"\ncommand = \"s.sh\"\nbogus = 1",
            "unknown field",
        ),
        ("name = \"other\"\ncommand = \"s.sh\"", "file name"),
        ("name = \"S\"\ncommand = \"s.sh\"", "must be 1 to 64"),
        ("name = \"s\"\ncommand = \"../s.sh\"", "without . or .."),
        ("name = \"s\"\ncommand = \"/bin/sh\"", "relative path"),
        (
            "name = \"s\"\ncommand = \"link.sh\"",
            "outside the scripts directory",
        ),
        ("name = \"s\"\ncommand = \"plain.txt\"", "not executable"),
        ("name = \"s\"\ncommand = \"sub\"", "not a regular file"),
        ("name = \"s\"\ncommand = \"missing.sh\"", "cannot be found"),
        (
            "name = \"s\"\ncommand = \"s.sh\"\ntimeout_secs = 0",
            "timeout_secs",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\nscope = \"root\"",
            "scope",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\nenv = [\"SECRET_DB\"]",
            "gives it no value",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\nenv = [\"PATH\"]",
            "set by the runner",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\n[[args]]\nname = \"a\"\ntype = \"enum\"",
            "needs its values",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\n[[args]]\nname = \"a\"\ntype = \"string\"\npattern = \"(\"",
            "not a regular expression",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\n[[args]]\nname = \"a\"\ntype = \"int\"\ndefault = \"x\"",
            "default",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\n[[args]]\nname = \"a\"\ntype = \"string\"\nsecret = true\ndefault = \"pw\"",
            "secret",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\nargv = \"positional\"\n[[args]]\nname = \"a\"\ntype = \"string\"",
            "positional",
        ),
        (
            "name = \"s\"\ncommand = \"s.sh\"\n[[args]]\nname = \"a\"\ntype = \"int\"\n[[args]]\nname = \"a\"\ntype = \"int\"",
            "twice",
        ),
    ];
    for (manifest, reason) in cases {
        let e = load(&dir, "s", manifest).unwrap_err();
        assert!(e.contains(reason), "{manifest:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    let e = load(&dir, "runs", "name = \"runs\"\ncommand = \"s.sh\"").unwrap_err();
    assert!(e.contains("reserved"), "{e}");
}
