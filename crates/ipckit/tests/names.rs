//! Property tests of name parsing and of the mapping from names to OS locations.
//!
//! - No input string ever maps to a path outside the namespace folders.
//! - Every invalid name yields `InvalidName` (and nothing else, and never a panic).
//! - Valid names round-trip through their text form and their OS encoding, and distinct
//!   names never share an OS location.

use std::path::{Component, Path};

use ipckit::ErrorKind;
use ipckit::name::{
    MAX_PATH, MAX_PIPE_NAME, MailslotName, Name, ObjectName, PipeName, decode_component,
    encode_component,
};
use ipckit::namespace::{Location, Namespace};
use proptest::prelude::*;

const RUNTIME: &str = "/run/user/1000/ipckit";

fn ns() -> Namespace {
    Namespace::at(RUNTIME)
}

/// A path is inside `root` as exactly `root/<folder>/<one component>` (or, for global
/// objects, `root/global/<folder>/<one component>`).
fn assert_confined(path: &Path, ns: &Namespace) {
    let rest = path
        .strip_prefix(ns.global_dir())
        .or_else(|_| path.strip_prefix(ns.runtime_dir()))
        .unwrap_or_else(|_| panic!("{} escapes the namespace", path.display()));
    let comps: Vec<_> = rest.components().collect();
    assert_eq!(comps.len(), 2, "{} is not folder/entry", path.display());
    for c in comps {
        match c {
            Component::Normal(s) => {
                let s = s.to_str().unwrap();
                assert!(
                    !s.is_empty() && s.len() <= 255 && s != "." && s != "..",
                    "{s:?}"
                );
                assert!(!s.contains('/') && !s.contains('\0'), "{s:?}");
            }
            other => panic!("{} has component {other:?}", path.display()),
        }
    }
    // Socket paths must fit sockaddr_un with room for an instance suffix.
    if !path.starts_with(ns.runtime_dir().join("object")) && !path.starts_with(ns.global_dir()) {
        assert!(
            path.as_os_str().len() <= RUNTIME.len() + 1 + 8 + 1 + 40,
            "{}",
            path.display()
        );
    }
}

fn check_any(s: &str) {
    match Name::parse(s) {
        Ok(name) => match ns().locate(&name).expect("valid names locate") {
            Location::Path(p) => assert_confined(&p, &ns()),
            Location::Object { path, shm_name } => {
                assert_confined(&path, &ns());
                assert!(
                    !shm_name.contains('/') && !shm_name.contains('\0'),
                    "{shm_name:?}"
                );
                assert!(shm_name.len() <= 255, "{shm_name:?}");
                assert!(shm_name.starts_with("ipckit."), "{shm_name:?}");
            }
            Location::Remote(r) => assert!(r.starts_with(r"\\")),
        },
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidName, "{s:?}: {e}"),
    }
}

/// Pieces that stress the parser: separators, dots, percent signs, NUL, non-ASCII.
fn nasty_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".into()),
        Just("..".into()),
        Just("/".into()),
        Just("\\".into()),
        Just("\\\\".into()),
        Just("\0".into()),
        Just("%2F".into()),
        Just("%2E%2E".into()),
        Just("~".into()),
        Just("pipe".into()),
        Just("mailslot".into()),
        Just("Local".into()),
        Just("Global".into()),
        Just("*".into()),
        "[a-zA-Z0-9 ._%~-]{1,12}",
        "\\PC{1,6}",
        any::<String>(),
    ]
}

fn nasty_name() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just(String::new()),
        Just(r"\\.\pipe\".to_string()),
        Just(r"\\.\PIPE\".to_string()),
        Just(r"\\.\mailslot\".to_string()),
        Just(r"\\*\mailslot\".to_string()),
        Just(r"\\host\pipe\".to_string()),
        Just(r"Local\".to_string()),
        Just(r"Global\".to_string()),
        Just(r"\\".to_string()),
    ];
    (prefix, prop::collection::vec(nasty_piece(), 0..8))
        .prop_map(|(p, pieces)| format!("{p}{}", pieces.concat()))
}

/// One valid path component (for pipes and mailslots) or object name.
fn valid_component() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.%~$#@!()é中-]{1,20}".prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn valid_pipe() -> impl Strategy<Value = String> {
    prop::collection::vec(valid_component(), 1..5)
        .prop_map(|c| format!(r"\\.\pipe\{}", c.join("\\")))
        .prop_filter("length", |s| s.encode_utf16().count() <= MAX_PIPE_NAME)
}

fn valid_mailslot() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("."), Just("*"), Just("otherhost")],
        prop::collection::vec(valid_component(), 1..5),
    )
        .prop_map(|(t, c)| format!(r"\\{t}\mailslot\{}", c.join("\\")))
        .prop_filter("length", |s| s.encode_utf16().count() <= MAX_PATH)
}

fn valid_object() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(r"Local\"), Just(r"Global\")],
        valid_component(),
    )
        .prop_map(|(p, n)| format!("{p}{n}"))
}

fn valid_name() -> impl Strategy<Value = String> {
    prop_oneof![valid_pipe(), valid_mailslot(), valid_object()]
}

/// A valid name with exactly one defect that makes it invalid.
fn invalid_name() -> impl Strategy<Value = String> {
    let defect = prop_oneof![
        Just("\0"),
        Just("/"),
        Just("\n"),
        Just("\u{7f}"),
        Just(r"\..\"),
        Just(r"\.\"),
        Just(r"\\"),
    ];
    prop_oneof![
        // A defect inside a pipe or mailslot name.
        (
            prop_oneof![Just(r"\\.\pipe\"), Just(r"\\.\mailslot\")],
            valid_component(),
            defect,
            valid_component()
        )
            .prop_map(|(p, a, d, b)| format!("{p}{a}{d}{b}")),
        // Empty or dot names after a prefix.
        prop_oneof![
            Just(r"\\.\pipe\"),
            Just(r"\\.\mailslot\"),
            Just(r"Local\"),
            Just(r"Global\"),
            Just("")
        ]
        .prop_flat_map(|p| prop_oneof![
            Just(String::new()),
            Just(".".into()),
            Just("..".into())
        ]
        .prop_map(move |n| format!("{p}{n}"))),
        // Object names with a backslash, a slash or a control character inside.
        (
            valid_component(),
            prop_oneof![Just("\\"), Just("/"), Just("\0"), Just("\t")],
            valid_component()
        )
            .prop_map(|(a, d, b)| format!(r"Local\{a}{d}{b}")),
        // Unknown prefixes.
        (
            prop_oneof![
                Just(r"Session\1\"),
                Just(r"global\"),
                Just(r"LOCAL\"),
                Just(r"\\.\other\"),
                Just(r"\.\pipe\")
            ],
            valid_component()
        )
            .prop_map(|(p, n)| format!("{p}{n}")),
        // Over-long names.
        (
            prop_oneof![Just(r"\\.\pipe\"), Just(r"\\.\mailslot\"), Just(r"Local\")],
            262usize..400
        )
            .prop_map(|(p, n)| format!("{p}{}", "n".repeat(n))),
        // Malformed host names.
        (
            prop_oneof![
                Just("bad host"),
                Just("-x"),
                Just("a/b"),
                Just(""),
                Just("..")
            ],
            valid_component()
        )
            .prop_map(|(h, n)| format!(r"\\{h}\pipe\{n}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_escape(s in any::<String>()) {
        check_any(&s);
    }

    #[test]
    fn hostile_names_never_escape(s in nasty_name()) {
        check_any(&s);
    }

    #[test]
    fn invalid_names_yield_invalid_name(s in invalid_name()) {
        let e = Name::parse(&s).expect_err(&s);
        prop_assert_eq!(e.kind(), ErrorKind::InvalidName, "{:?}: {}", s, e);
        prop_assert_eq!(e.win32_code(), 123);
    }

    #[test]
    fn valid_names_round_trip(s in valid_name()) {
        let name = Name::parse(&s).expect(&s);
        let text = name.to_string();
        prop_assert_eq!(&Name::parse(&text).unwrap(), &name);
        prop_assert_eq!(Name::parse(&text).unwrap().to_string(), text.clone());
        match &name {
            Name::Pipe(p) => prop_assert_eq!(decode_component(&encode_component(p.key(), usize::MAX)).unwrap(), p.key()),
            Name::Mailslot(m) => prop_assert_eq!(decode_component(&encode_component(m.key(), usize::MAX)).unwrap(), m.key()),
            Name::Object(o) => prop_assert_eq!(decode_component(&encode_component(o.name(), usize::MAX)).unwrap(), o.name()),
        }
    }

    #[test]
    fn pipe_and_mailslot_names_ignore_case(s in prop_oneof![valid_pipe(), valid_mailslot()]) {
        let upper = s.to_uppercase();
        // Upper-casing can lengthen a name past its limit; that is a different name then.
        if let Ok(u) = Name::parse(&upper) {
            let n = Name::parse(&s).unwrap();
            prop_assert_eq!(&u, &n);
            prop_assert_eq!(ns().locate(&u).unwrap(), ns().locate(&n).unwrap());
        }
    }

    #[test]
    fn distinct_names_have_distinct_locations(a in valid_name(), b in valid_name()) {
        let (na, nb) = (Name::parse(&a).unwrap(), Name::parse(&b).unwrap());
        let (la, lb) = (ns().locate(&na).unwrap(), ns().locate(&nb).unwrap());
        prop_assert_eq!(na == nb, la == lb, "{:?} {:?}", la, lb);
        if let (Location::Object { shm_name: sa, .. }, Location::Object { shm_name: sb, .. }) = (&la, &lb) {
            prop_assert_eq!(na == nb, sa == sb);
        }
    }

    #[test]
    fn encoding_is_confined_and_reversible(s in any::<String>(), limit in 1usize..300) {
        let c = encode_component(&s, limit);
        prop_assert!(!c.is_empty() && !c.contains('/') && !c.contains('\0') && !c.starts_with('.'));
        prop_assert!(c.len() <= limit.max(33));
        if let Some(d) = decode_component(&c) {
            prop_assert_eq!(d, s);
        } else {
            prop_assert!(c.starts_with('~'));
        }
    }
}

#[test]
fn typed_parsers_agree_with_name_parse() {
    assert!(PipeName::parse(r"\\.\pipe\x").is_ok());
    assert!(MailslotName::parse(r"\\.\mailslot\x").is_ok());
    assert!(ObjectName::parse(r"Global\x").is_ok());
    assert_eq!(
        PipeName::parse(r"\\.\mailslot\x").unwrap_err().kind(),
        ErrorKind::InvalidName
    );
    assert_eq!(
        ObjectName::parse(r"\\.\pipe\x").unwrap_err().kind(),
        ErrorKind::InvalidName
    );
}
