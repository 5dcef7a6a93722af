//! The credential files on real file systems: capture through inotify (atomic renames, in-place
//! writes, directories made late), writes confined to the user's home, wipes.

// A panic is a test's failure report, in its helpers too.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap as HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fs_kinds;

use tokio::sync::mpsc;
use vm_agent::creds::confine::{CredPathError, Owner};
use vm_agent::creds::rules::credential_rules;
use vm_agent::creds::watch::{watch, Capture, CredentialWatch};
use vm_agent::creds::wipe::wipe_file;
use vm_agent::creds::write::put_file;
use vm_agent::providers::ProviderRules;

fn claude_json(tag: &str) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"fake-access-token-{tag}","refreshToken":"fake-refresh-token-{tag}","expiresAt":1,"scopes":["user:inference"]}}}}"#
    )
}

struct Home {
    _fs: fs_kinds::FsDir,
    root: PathBuf,
    home: PathBuf,
}

fn home_in(fs: fs_kinds::FsDir) -> Home {
    let root = fs.path().to_path_buf();
    let home = root.join("home").join("alice");
    std::fs::create_dir_all(&home).unwrap();
    Home {
        _fs: fs,
        root,
        home,
    }
}

fn claude_path(h: &Home) -> PathBuf {
    credential_rules(
        &ProviderRules::builtin(),
        "claude_code",
        &h.home,
        &HashMap::new(),
    )
    .unwrap()[0]
        .path
        .clone()
}

async fn start(
    h: &Home,
    env: HashMap<String, String>,
) -> (CredentialWatch, mpsc::Receiver<Capture>) {
    let files = credential_rules(&ProviderRules::builtin(), "claude_code", &h.home, &env).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let w = watch(vec![h.home.clone()], files, false, tx).unwrap();
    (w, rx)
}

async fn next(rx: &mut mpsc::Receiver<Capture>) -> Capture {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no capture within 10 s")
        .expect("watch ended")
}

async fn none_for(rx: &mut mpsc::Receiver<Capture>, ms: u64) {
    if let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        panic!(
            "unexpected capture of {} ({})",
            c.path.display(),
            String::from_utf8_lossy(&c.content.0)
        );
    }
}

#[tokio::test]
async fn captures_after_nested_dirs_appear_then_temp_rename() {
    for fs in fs_kinds::all() {
        let h = home_in(fs);
        let mut env = HashMap::new();
        let deep = h.home.join("x/y/z");
        env.insert("CLAUDE_CONFIG_DIR".to_string(), deep.display().to_string());
        let (_w, mut rx) = start(&h, env).await;
        std::fs::create_dir(h.home.join("x")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::create_dir(h.home.join("x/y")).unwrap();
        std::fs::create_dir(h.home.join("x/y/z")).unwrap();
        let tmp = deep.join(".credentials.json.tmp.123");
        std::fs::write(&tmp, claude_json("1")).unwrap();
        std::fs::rename(&tmp, deep.join(".credentials.json")).unwrap();
        let c = next(&mut rx).await;
        assert_eq!(c.path, deep.join(".credentials.json"));
        assert_eq!(c.content.0, claude_json("1").as_bytes());
        none_for(&mut rx, 300).await;
    }
}

#[tokio::test]
async fn in_place_chunks_and_dedupe_and_refresh() {
    for fs in fs_kinds::all() {
        let h = home_in(fs);
        std::fs::create_dir(h.home.join(".claude")).unwrap();
        let (_w, mut rx) = start(&h, HashMap::new()).await;
        let p = claude_path(&h);
        let body = claude_json("2");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&p).unwrap();
            for chunk in body.as_bytes().chunks(7) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            // Pause longer than the quiet period with the file open and half... (complete here)
        }
        let c = next(&mut rx).await;
        assert_eq!(c.content.0, body.as_bytes());
        // Same content, rewritten with extra whitespace: one capture only.
        std::fs::write(&p, format!("{body}\n")).unwrap();
        none_for(&mut rx, 400).await;
        // Token refresh: a new capture.
        std::fs::write(&p, claude_json("3")).unwrap();
        let c = next(&mut rx).await;
        assert_eq!(c.content.0, claude_json("3").as_bytes());
    }
}

#[tokio::test]
async fn writer_dying_half_way_is_not_captured() {
    let h = home_in(fs_kinds::tmpfs());
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    let p = claude_path(&h);
    let body = claude_json("4");
    let half = &body[..body.len() / 2];
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            r#"exec 3>"$1"; printf '%s' "$0" >&3; sleep 0.4; kill -9 $$"#,
            half,
            p.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(!status.success());
    assert_eq!(std::fs::read(&p).unwrap(), half.as_bytes());
    none_for(&mut rx, 800).await;
    std::fs::write(&p, &body).unwrap();
    assert_eq!(next(&mut rx).await.content.0, body.as_bytes());
}

#[tokio::test]
async fn missing_required_field_is_not_captured() {
    let h = home_in(fs_kinds::tmpfs());
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    let p = claude_path(&h);
    std::fs::write(
        &p,
        r#"{"claudeAiOauth":{"accessToken":"fake-access-token-5"}}"#,
    )
    .unwrap();
    none_for(&mut rx, 500).await;
    std::fs::write(&p, claude_json("5")).unwrap();
    assert_eq!(next(&mut rx).await.content.0, claude_json("5").as_bytes());
}

#[test]
fn put_creates_parents_with_owner_and_modes() {
    for fs in fs_kinds::all() {
        let h = home_in(fs);
        let owner = if rustix::process::getuid().is_root() {
            Owner {
                uid: 4242,
                gid: 4343,
            }
        } else {
            Owner::current()
        };
        let p = h.home.join(".config/deep/.credentials.json");
        let out = put_file(&roots(&h), &p, claude_json("6").as_bytes(), owner).unwrap();
        assert_eq!(
            out.created_dirs,
            vec![h.home.join(".config"), h.home.join(".config/deep")]
        );
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!((md.uid(), md.gid()), (owner.uid, owner.gid));
        for d in &out.created_dirs {
            let md = std::fs::metadata(d).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o700);
            assert_eq!((md.uid(), md.gid()), (owner.uid, owner.gid));
        }
        assert_eq!(std::fs::read(&p).unwrap(), claude_json("6").as_bytes());
        // Replace: no temp files left.
        put_file(&roots(&h), &p, claude_json("7").as_bytes(), owner).unwrap();
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".credentials.json")]);
        let removed = wipe_file(&roots(&h), &p).unwrap();
        assert_eq!(removed, vec![p.clone()]);
        assert!(!p.exists());
        assert_eq!(wipe_file(&roots(&h), &p).unwrap(), Vec::<PathBuf>::new());
    }
}

#[test]
fn symlink_at_every_level_is_refused() {
    for fs in fs_kinds::all() {
        let h = home_in(fs);
        let outside = h.root.join("outside");
        std::fs::create_dir(&outside).unwrap();
        let roots = vec![h.home.clone()];
        let levels = ["a", "a/b", "a/b/c", "a/b/c/creds.json"];
        for (i, level) in levels.iter().enumerate() {
            let _ = std::fs::remove_dir_all(h.home.join("a"));
            if i > 0 {
                std::fs::create_dir_all(h.home.join(levels[i - 1])).unwrap();
            }
            let victim = outside.join("creds.json");
            std::fs::write(&victim, "original").unwrap();
            let link_target = if level.ends_with(".json") {
                victim.clone()
            } else {
                outside.clone()
            };
            std::os::unix::fs::symlink(&link_target, h.home.join(level)).unwrap();
            let target = h.home.join("a/b/c/creds.json");
            let err = put_file(&roots, &target, b"{}", Owner::current()).unwrap_err();
            assert!(
                matches!(&err, CredPathError::Symlink(p) if p == &h.home.join(level)),
                "{} level {level}: {err}",
                h._fs.kind
            );
            assert!(err.to_string().contains("symlink"), "clear message: {err}");
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
            let entries: Vec<_> = std::fs::read_dir(&outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                entries.len(),
                1,
                "nothing new written outside at level {level}: {entries:?}"
            );
            // Wiping through the planted link must not touch the outside either.
            if i < levels.len() - 1 {
                let err = wipe_file(&roots, &target).unwrap_err();
                assert!(matches!(err, CredPathError::Symlink(_)), "{err}");
            } else {
                // The link itself is what sits at the credential name: it is removed, not followed.
                assert_eq!(wipe_file(&roots, &target).unwrap(), vec![target.clone()]);
            }
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
        }
    }
}

#[tokio::test]
async fn watch_does_not_read_through_a_symlinked_directory() {
    let h = home_in(fs_kinds::tmpfs());
    let outside = h.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join(".credentials.json"), claude_json("8")).unwrap();
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    std::os::unix::fs::symlink(&outside, h.home.join(".claude")).unwrap();
    std::fs::write(outside.join(".credentials.json"), claude_json("9")).unwrap();
    none_for(&mut rx, 500).await;
    // Replacing the link with a real directory is followed and captured.
    std::fs::remove_file(h.home.join(".claude")).unwrap();
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    std::fs::write(claude_path(&h), claude_json("10")).unwrap();
    assert_eq!(next(&mut rx).await.content.0, claude_json("10").as_bytes());
}

#[tokio::test]
async fn watch_ignores_a_hard_link_to_another_file() {
    let h = home_in(fs_kinds::tmpfs());
    let other = h.root.join("other-users-creds.json");
    std::fs::write(&other, claude_json("12")).unwrap();
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    std::fs::hard_link(&other, claude_path(&h)).unwrap();
    none_for(&mut rx, 500).await;
    // The CLI replacing it with its own file is captured.
    std::fs::remove_file(claude_path(&h)).unwrap();
    std::fs::write(claude_path(&h), claude_json("13")).unwrap();
    assert_eq!(next(&mut rx).await.content.0, claude_json("13").as_bytes());
}

#[tokio::test]
async fn existing_file_is_a_baseline_unless_asked_for() {
    let h = home_in(fs_kinds::tmpfs());
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    std::fs::write(claude_path(&h), claude_json("14")).unwrap();
    let files = credential_rules(
        &ProviderRules::builtin(),
        "claude_code",
        &h.home,
        &HashMap::new(),
    )
    .unwrap();
    let (tx, mut with_existing) = mpsc::channel(4);
    let _a = watch(roots(&h), files.clone(), true, tx).unwrap();
    assert_eq!(
        next(&mut with_existing).await.content.0,
        claude_json("14").as_bytes()
    );
    let (tx, mut baseline) = mpsc::channel(4);
    let _b = watch(roots(&h), files, false, tx).unwrap();
    none_for(&mut baseline, 400).await;
    std::fs::write(claude_path(&h), claude_json("15")).unwrap();
    assert_eq!(
        next(&mut baseline).await.content.0,
        claude_json("15").as_bytes()
    );
    assert_eq!(
        next(&mut with_existing).await.content.0,
        claude_json("15").as_bytes()
    );
}

#[tokio::test]
async fn directory_moved_away_and_recreated_is_followed() {
    let h = home_in(fs_kinds::ext4());
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    std::fs::write(claude_path(&h), claude_json("16")).unwrap();
    assert_eq!(next(&mut rx).await.content.0, claude_json("16").as_bytes());
    // The old directory (still watched by inode) goes away; a new one takes its name.
    std::fs::rename(h.home.join(".claude"), h.home.join(".claude.bak")).unwrap();
    std::fs::write(
        h.home.join(".claude.bak/.credentials.json"),
        claude_json("17"),
    )
    .unwrap();
    std::fs::create_dir(h.home.join(".claude")).unwrap();
    std::fs::write(claude_path(&h), claude_json("18")).unwrap();
    assert_eq!(next(&mut rx).await.content.0, claude_json("18").as_bytes());
    none_for(&mut rx, 300).await;
}

#[test]
fn wipe_removes_temp_leftovers_too() {
    let h = home_in(fs_kinds::tmpfs());
    let p = claude_path(&h);
    put_file(
        &roots(&h),
        &p,
        claude_json("11").as_bytes(),
        Owner::current(),
    )
    .unwrap();
    let dir = p.parent().unwrap();
    std::fs::write(dir.join(".credentials.json.tmp-999-1-0"), "{").unwrap();
    std::fs::write(dir.join(".credentials.json.tmp.4242"), "{").unwrap();
    std::fs::write(dir.join("settings.json"), "{}").unwrap();
    let mut removed = wipe_file(&roots(&h), &p).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            dir.join(".credentials.json"),
            dir.join(".credentials.json.tmp-999-1-0"),
            dir.join(".credentials.json.tmp.4242")
        ]
    );
    assert!(
        dir.join("settings.json").exists(),
        "other files are left alone"
    );
}

#[test]
fn escapes_are_refused() {
    let h = home_in(fs_kinds::tmpfs());
    let roots = vec![h.home.clone()];
    let err = put_file(
        &roots,
        &h.home.join("../bob/.credentials.json"),
        b"{}",
        Owner::current(),
    )
    .unwrap_err();
    assert!(matches!(err, CredPathError::ParentComponent(_)), "{err}");
    let err = put_file(&roots, Path::new("/etc/cron.d/x"), b"{}", Owner::current()).unwrap_err();
    assert!(matches!(err, CredPathError::OutsideRoots(_)), "{err}");
    let err = put_file(&roots, Path::new(".claude/x"), b"{}", Owner::current()).unwrap_err();
    assert!(matches!(err, CredPathError::NotAbsolute(_)), "{err}");
    let err = put_file(&roots, &h.home, b"{}", Owner::current()).unwrap_err();
    assert!(matches!(err, CredPathError::OutsideRoots(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_push_and_watch_never_captures_partial() {
    let h = home_in(fs_kinds::tmpfs());
    let (_w, mut rx) = start(&h, HashMap::new()).await;
    let p = claude_path(&h);
    let home = h.home.clone();
    let p2 = p.clone();
    let pusher = std::thread::spawn(move || {
        for i in 0..200 {
            // Large enough to need several writes' worth of page cache.
            let padding = "x".repeat(64 * 1024);
            let body = format!(
                r#"{{"claudeAiOauth":{{"accessToken":"fake-access-token-{i}","refreshToken":"fake-refresh-token-{i}","pad":"{padding}"}}}}"#
            );
            put_file(
                std::slice::from_ref(&home),
                &p2,
                body.as_bytes(),
                Owner::current(),
            )
            .unwrap();
        }
    });
    let mut last;
    loop {
        let c = next(&mut rx).await;
        let v: serde_json::Value =
            serde_json::from_slice(&c.content.0).expect("only complete files");
        let tok = v["claudeAiOauth"]["accessToken"]
            .as_str()
            .unwrap()
            .to_string();
        last = Some(tok.clone());
        if tok == "fake-access-token-199" {
            break;
        }
    }
    pusher.join().unwrap();
    assert_eq!(last.as_deref(), Some("fake-access-token-199"));
}

fn roots(h: &Home) -> Vec<PathBuf> {
    vec![h.home.clone()]
}
