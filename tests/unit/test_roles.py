"""Roles: manifest validation (each error located as file:line: field), safe reading of the role
directory, the content hash, the archive, git sources, and the shipped example roles."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path
from textwrap import dedent

import pytest

from agent_host import layout
from agent_host import roles as host_roles
from agent_host.protocol import RemoteError
from jackin_remote.roles import RUNTIMES, Role, RoleError, image_tag, load_role, tree
from jackin_remote.roles.manifest import PRIVILEGE_KEYS
from jackin_remote.roles.source import parse_git_source
from jackin_remote.roles.transfer import host_role_subpath, role_archive, upload_script

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
version = 1
name = "demo"
dockerfile = "Dockerfile"
runtimes = ["shell", "claude"]
user = "agent"
"""


# ---- helpers -------------------------------------------------------------------------------


def make_role(directory: Path, manifest: str = GOOD, dockerfile: str = "Dockerfile") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "jackin.role.toml").write_text(dedent(manifest))
    if dockerfile:
        path = directory / dockerfile
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("FROM scratch\n")
    return directory


def line_of(path: Path, fragment: str) -> int:
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")


def role_error(source: Path | str) -> RoleError:
    with pytest.raises(RoleError) as caught:
        load_role(source)
    assert caught.value.hint, f"no hint: {caught.value}"
    return caught.value


def assert_at(
    err: RoleError, directory: Path, fragment: str | None, field: str, *words: str
) -> None:
    manifest = directory / "jackin.role.toml"
    line = line_of(manifest, fragment) if fragment is not None else None
    where = f"{manifest}:{line}" if line is not None else str(manifest)
    text = str(err)
    assert text.startswith(f"{where}: {field}: "), text
    assert (err.file, err.line, err.field) == (str(manifest), line, field)
    for word in words:
        assert word in text, (word, text)


def with_line(replace: str, by: str) -> str:
    assert replace in GOOD
    return GOOD.replace(replace, by)


# ---- a good role ---------------------------------------------------------------------------


def test_a_good_role_loads(tmp_path: Path) -> None:
    role = load_role(make_role(tmp_path / "r"))
    assert role.name == "demo" and role.version == 1
    assert role.dockerfile == "Dockerfile"
    assert role.runtimes == ("shell", "claude")
    assert role.user == "agent"
    assert role.directory == (tmp_path / "r").resolve()
    assert role.manifest_path == role.directory / "jackin.role.toml"
    assert len(role.content_hash) == 64 and int(role.content_hash, 16) >= 0
    assert image_tag(role) == f"jackin-role-demo:{role.content_hash[:12]}"


def test_the_manifest_file_itself_names_its_role(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    by_file = load_role(directory / "jackin.role.toml")
    assert by_file.directory == directory.resolve()
    assert by_file.content_hash == load_role(directory).content_hash


@pytest.mark.parametrize("name", ["test-agent", "agent-clis"])
def test_example_roles_load(name: str) -> None:
    role = load_role(REPO / "roles" / name)
    assert role.name == name
    assert role.user == "agent"
    assert (role.directory / role.dockerfile).is_file()
    assert set(role.runtimes) <= set(RUNTIMES)


def test_example_test_agent_builds_offline_from_the_test_base() -> None:
    role = load_role(REPO / "roles" / "test-agent")
    dockerfile = (role.directory / role.dockerfile).read_text()
    assert "FROM jackin-test-base:latest" in dockerfile
    assert "apt-get" not in dockerfile  # builds with no network
    assert set(role.runtimes) == {"shell", "demo"}
    assert os.access(role.directory / "jackin-demo-agent", os.X_OK)


def test_example_agent_clis_role_installs_the_agent_clis_for_every_runtime() -> None:
    role = load_role(REPO / "roles" / "agent-clis")
    dockerfile = (role.directory / role.dockerfile).read_text()
    assert dockerfile.startswith("#") and "FROM node:22-bookworm-slim" in dockerfile
    for package in ("@anthropic-ai/claude-code", "@openai/codex", "@google/gemini-cli",
                    "opencode-ai", "@ampcode/cli"):  # fmt: skip
        assert package in dockerfile
    assert set(role.runtimes) == set(RUNTIMES) - {"demo"}


# ---- where the role is ---------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    err = role_error(tmp_path / "nope")
    assert "no such role directory" in str(err)


def test_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    err = role_error(tmp_path / "r")
    assert "not a role: no jackin.role.toml" in str(err)


def test_a_symlinked_manifest_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.toml"
    outside.write_text(GOOD)
    directory = tmp_path / "r"
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM scratch\n")
    (directory / "jackin.role.toml").symlink_to(outside)
    err = role_error(directory)
    assert str(err) == f"cannot read {directory / 'jackin.role.toml'}: it is a symlink\n" + (
        f"  hint: {err.hint}"
    )


# ---- manifest: syntax, keys, types ---------------------------------------------------------


def test_invalid_toml_is_located(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", GOOD + "user = = 1\n")
    err = role_error(directory)
    assert str(err).startswith(f"{directory / 'jackin.role.toml'}:6: invalid TOML"), str(err)


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    err = role_error(make_role(tmp_path / "r", GOOD + 'name = "again"\n'))
    assert "invalid TOML" in str(err) and ":6:" in str(err)


def test_not_utf8(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "jackin.role.toml").write_bytes(GOOD.encode() + b'description = "\xff"\n')
    err = role_error(directory)
    assert ":6: not UTF-8" in str(err)


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", GOOD + 'runtime = ["shell"]\n')
    assert_at(role_error(directory), directory, "runtime =", "runtime", "unknown key")
    assert role_error(directory).hint == "did you mean `runtimes`?"


def test_unknown_key_without_a_close_one_lists_the_known_keys(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", GOOD + "colour = 3\n")
    err = role_error(directory)
    assert_at(err, directory, "colour", "colour", "unknown key")
    assert err.hint is not None and "known keys: version, name, dockerfile" in err.hint


@pytest.mark.parametrize("key", ["version", "name", "dockerfile", "runtimes", "user"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key + " "))
    err = role_error(make_role(tmp_path / "r", text + "\n"))
    assert_at(err, tmp_path / "r", None, key, "missing required key")
    assert err.hint is not None and err.hint.startswith(f"add `{key} = ")


@pytest.mark.parametrize(
    ("replace", "by", "field", "words"),
    [
        ("version = 1", 'version = "1"', "version", ["expected integer, got string"]),
        ("version = 1", "version = true", "version", ["expected integer, got boolean"]),
        ("version = 1", "version = 2", "version", ["unsupported manifest version 2"]),
        ('name = "demo"', "name = 3", "name", ["expected string, got integer"]),
        ('name = "demo"', 'name = "Demo"', "name", ["invalid role name 'Demo'"]),
        ('name = "demo"', 'name = "-x"', "name", ["invalid role name"]),
        ('name = "demo"', 'name = "a/b"', "name", ["invalid role name"]),
        ('name = "demo"', 'name = "x-"', "name", ["invalid role name"]),
        ('dockerfile = "Dockerfile"', "dockerfile = 1", "dockerfile", ["expected string"]),
        ('runtimes = ["shell", "claude"]', 'runtimes = "shell"', "runtimes", ["expected array"]),
        ('runtimes = ["shell", "claude"]', "runtimes = []", "runtimes", ["at least one"]),
        ('runtimes = ["shell", "claude"]', "runtimes = [1]", "runtimes", ["expected strings"]),
        ('runtimes = ["shell", "claude"]', 'runtimes = ["cluade"]', "runtimes",
         ["unknown runtime 'cluade'"]),
        ('runtimes = ["shell", "claude"]', 'runtimes = ["shell", "shell"]', "runtimes",
         ["listed twice"]),
        ('user = "agent"', "user = 1000", "user", ["expected string, got integer"]),
        ('user = "agent"', 'user = "bad user"', "user", ["invalid user"]),
        ('user = "agent"', 'user = "$(id)"', "user", ["invalid user"]),
        ('user = "agent"', 'user = "a:b:c"', "user", ["invalid user"]),
    ],
)  # fmt: skip
def test_bad_values_are_located(
    tmp_path: Path, replace: str, by: str, field: str, words: list[str]
) -> None:
    directory = make_role(tmp_path / "r", with_line(replace, by))
    assert_at(role_error(directory), directory, by, field, *words)


def test_unknown_runtime_suggests_the_closest(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", with_line('"shell", "claude"', '"shel"'))
    err = role_error(directory)
    assert err.hint is not None and err.hint.startswith("did you mean `shell`?")


# ---- manifest: the agent's user ------------------------------------------------------------


@pytest.mark.parametrize("user", ["root", "0", "0:0", "00", "root:agent", "0:1000"])
def test_root_user_is_refused(tmp_path: Path, user: str) -> None:
    directory = make_role(tmp_path / "r", with_line('user = "agent"', f'user = "{user}"'))
    err = role_error(directory)
    assert_at(err, directory, f'user = "{user}"', "user", "must not run as root")


@pytest.mark.parametrize("user", ["agent", "1000", "agent:agent", "1000:1000", "_svc", "a-b"])
def test_non_root_user_forms(tmp_path: Path, user: str) -> None:
    role = load_role(make_role(tmp_path / "r", with_line('user = "agent"', f'user = "{user}"')))
    assert role.user == user


# ---- manifest: the dockerfile path ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/etc/passwd", ["must be relative"]),
        ("/tmp/Dockerfile", ["must be relative"]),
        ("~/Dockerfile", ["must be relative"]),
        ("../Dockerfile", ["must stay inside", "`..`"]),
        ("docker/../../Dockerfile", ["must stay inside"]),
        ("a/..", ["must stay inside"]),
        ("", ["must not be empty"]),
        (".", ["names a directory"]),
        ("Docker\\nfile", ["control character or backslash"]),
    ],
)
def test_bad_dockerfile_paths(tmp_path: Path, value: str, words: list[str]) -> None:
    toml_value = value.replace("\\", "\\\\")
    directory = make_role(
        tmp_path / "r", with_line('dockerfile = "Dockerfile"', f'dockerfile = "{toml_value}"')
    )
    assert_at(role_error(directory), directory, "dockerfile =", "dockerfile", *words)


def test_dockerfile_in_a_subdirectory_is_normalized(tmp_path: Path) -> None:
    manifest = with_line('"Dockerfile"', '"./docker//agent.Dockerfile"')
    role = load_role(make_role(tmp_path / "r", manifest, dockerfile="docker/agent.Dockerfile"))
    assert role.dockerfile == "docker/agent.Dockerfile"


def test_dockerfile_must_exist(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", dockerfile="")
    assert_at(role_error(directory), directory, "dockerfile =", "dockerfile", "does not exist")


def test_dockerfile_must_be_a_file(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", with_line('"Dockerfile"', '"sub"'), dockerfile="")
    (directory / "sub").mkdir()
    assert_at(role_error(directory), directory, "dockerfile =", "dockerfile", "not a regular file")


def test_dockerfile_symlinked_out_of_the_role_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("FROM scratch\n")
    directory = make_role(tmp_path / "r", dockerfile="")
    (directory / "Dockerfile").symlink_to(tmp_path / "outside")
    err = role_error(directory)
    assert_at(err, directory, "dockerfile =", "dockerfile", "resolves outside the role")


# ---- manifest: privileges ------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(PRIVILEGE_KEYS))
def test_privilege_keys_are_the_operators_decision(tmp_path: Path, key: str) -> None:
    directory = make_role(tmp_path / "r", GOOD + f"{key} = true\n")
    err = role_error(directory)
    assert_at(
        err, directory, f"{key} = true", key,
        f"roles cannot grant themselves privileges: `{key}` is the operator's decision",
        PRIVILEGE_KEYS[key],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("snippet", "fragment", "field", "key"),
    [
        ('[network]\npolicy = "open"\n', "[network]", "network", "network"),
        ("[extra]\ncap-add = ['NET_ADMIN']\n", "cap-add", "extra.cap-add", "cap-add"),
        ('[[tools]]\nname = "x"\n[tools.Docker]\nx = 1\n', "[tools.Docker]", "tools.Docker",
         "Docker"),
        ('settings = { limits = { memory = "64g" } }\n', "settings =", "settings.limits",
         "limits"),
    ],
)  # fmt: skip
def test_privilege_keys_are_refused_at_any_depth(
    tmp_path: Path, snippet: str, fragment: str, field: str, key: str
) -> None:
    directory = make_role(tmp_path / "r", GOOD + snippet)
    err = role_error(directory)
    assert_at(err, directory, fragment, field, f"`{key}` is the operator's decision")


def test_privileges_are_reported_before_other_problems(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r", 'bogus = 1\nversion = "x"\nnetwork = "open"\n')
    assert "roles cannot grant themselves privileges" in str(role_error(directory))


def test_every_privilege_pointer_names_a_decider() -> None:
    for key, decider in PRIVILEGE_KEYS.items():
        assert "launch" in decider or "inventory" in decider or "nobody" in decider, key


# ---- reading the directory -----------------------------------------------------------------


def test_content_hash_is_stable_and_tracks_every_change(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "tool.sh").write_text("echo hi\n")
    first = load_role(directory).content_hash
    assert load_role(directory).content_hash == first

    # The hash does not depend on where the role lives, or on file times.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)
    os.utime(copy / "tool.sh", (1, 1))
    assert load_role(copy).content_hash == first

    (directory / "tool.sh").write_text("echo bye\n")
    changed = load_role(directory).content_hash
    assert changed != first
    (directory / "tool.sh").chmod(0o755)
    executable = load_role(directory).content_hash
    assert executable not in (first, changed)
    (directory / "tool.sh").rename(directory / "tool2.sh")
    assert load_role(directory).content_hash not in (first, changed, executable)


def test_git_metadata_is_not_part_of_the_role(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    before = load_role(directory).content_hash
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    (directory / ".git" / "anything").write_text("x")
    assert load_role(directory).content_hash == before
    names = [entry.path for entry in tree.snapshot(directory)]
    assert not any(part == ".git" for name in names for part in name.split("/"))


def test_the_known_hash_of_a_tiny_role() -> None:
    """Pins the hash format: a change here re-builds every role on every host."""
    entries = [
        tree.Entry("Dockerfile", "file", False, b"FROM scratch\n"),
        tree.Entry("bin", "dir", True),
        tree.Entry("bin/run", "file", True, b"#!/bin/sh\n"),
        tree.Entry("link", "link", False, b"bin/run"),
    ]
    assert tree.content_hash(entries) == tree.content_hash(list(entries))
    assert tree.content_hash(entries) != tree.content_hash(entries[:3])
    # The path/content boundary is unambiguous.
    assert tree.content_hash([tree.Entry("ab", "file", False, b"c")]) != tree.content_hash(
        [tree.Entry("a", "file", False, b"bc")]
    )


def test_symlink_escaping_the_role_is_an_error(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "secrets").symlink_to("../../etc")
    err = role_error(directory)
    assert "symlink '../../etc' points outside the role" in str(err)


def test_absolute_symlink_is_an_error(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "ssh").symlink_to(Path.home() / ".ssh")
    assert "symlink to an absolute path" in str(role_error(directory))


def test_symlink_escaping_through_another_link_is_an_error(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "here").symlink_to(".")
    (directory / "sneaky").symlink_to("here/../outside")  # lexically inside, really ../outside
    assert "resolves outside the role" in str(role_error(directory))


def test_symlinks_inside_the_role_are_kept_as_links(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "bin").mkdir()
    (directory / "bin" / "tool").write_text("x")
    (directory / "tool").symlink_to("bin/tool")
    (directory / "bin" / "self").symlink_to("../bin")
    role = load_role(directory)
    entries = {e.path: e for e in tree.snapshot(role.directory)}
    assert entries["tool"].kind == "link" and entries["tool"].data == b"bin/tool"
    assert entries["bin/self"].kind == "link"


def test_special_files_are_refused(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    os.mkfifo(directory / "pipe")
    assert "not a regular file, directory or symlink" in str(role_error(directory))


def test_archive_is_deterministic_and_normalized(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    (directory / "run.sh").write_text("#!/bin/sh\n")
    (directory / "run.sh").chmod(0o700)
    (directory / "data").mkdir()
    (directory / "data" / "x").write_text("x")
    (directory / "data" / "x").chmod(0o600)
    (directory / "lnk").symlink_to("data/x")
    role = load_role(directory)
    first = role_archive(role)
    os.utime(directory / "run.sh", (5, 5))
    assert role_archive(role) == first
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == sorted(members)
        assert members["run.sh"].mode == 0o755 and members["data/x"].mode == 0o644
        assert members["data"].isdir() and members["lnk"].issym()
        assert members["lnk"].linkname == "data/x"
        assert {(m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, "")}
        assert {m.name for m in members.values()} == {
            "Dockerfile", "jackin.role.toml", "run.sh", "data", "data/x", "lnk"
        }  # fmt: skip
        extracted = tar.extractfile("data/x")
        assert extracted is not None and extracted.read() == b"x"


def test_archive_refuses_a_role_changed_since_it_was_loaded(tmp_path: Path) -> None:
    directory = make_role(tmp_path / "r")
    role = load_role(directory)
    (directory / "new").write_text("late")
    with pytest.raises(RoleError, match="changed while it was being used"):
        role_archive(role)


# ---- shipping to a host --------------------------------------------------------------------


def test_upload_path_mirrors_the_host_layout(tmp_path: Path) -> None:
    role = load_role(make_role(tmp_path / "r"))
    assert host_role_subpath(role) == f"roles/demo/{role.content_hash}"
    assert layout.role_dir("/srv/jackin", role.name, role.content_hash) == (
        f"/srv/jackin/roles/demo/{role.content_hash}"
    )


def test_upload_script_unpacks_atomically_and_expands_tilde(tmp_path: Path) -> None:
    role = load_role(make_role(tmp_path / "r"))
    home = tmp_path / "home"
    home.mkdir()
    script = upload_script("~/jr", role)
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    data = role_archive(role)
    for _ in range(2):  # the second run finds the role there and leaves it alone
        done = subprocess.run(["/bin/sh", "-c", script], input=data, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
    dest = home / "jr" / host_role_subpath(role)
    assert (dest / "Dockerfile").read_text() == "FROM scratch\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == [role.content_hash]


def test_upload_script_reports_a_corrupt_archive(tmp_path: Path) -> None:
    role = load_role(make_role(tmp_path / "r"))
    script = upload_script(str(tmp_path / "root"), role)
    done = subprocess.run(["/bin/sh", "-c", script], input=b"not a tarball", capture_output=True)
    assert done.returncode != 0
    assert not (tmp_path / "root" / host_role_subpath(role)).exists()
    assert list((tmp_path / "root" / "roles" / "demo").iterdir()) == []


# ---- the host side's own checks ------------------------------------------------------------


@pytest.mark.parametrize("value", ["/etc/passwd", "../x", "a/../../x", "", 3, "a\\b", "x\n"])
def test_host_rechecks_the_dockerfile_path(tmp_path: Path, value: object) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(RemoteError) as caught:
        host_roles.check_dockerfile(str(tmp_path), value)
    assert caught.value.code == "invalid_params"


def test_host_refuses_a_dockerfile_symlinked_outside(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "outside").write_text("FROM scratch\n")
    (tmp_path / "ctx" / "Dockerfile").symlink_to(tmp_path / "outside")
    with pytest.raises(RemoteError):
        host_roles.check_dockerfile(str(tmp_path / "ctx"), "Dockerfile")
    (tmp_path / "ctx" / "real").write_text("FROM scratch\n")
    assert host_roles.check_dockerfile(str(tmp_path / "ctx"), "real") == "real"


@pytest.mark.parametrize(
    "params",
    [
        {"name": "../x", "hash": "a" * 64},
        {"name": "ok", "hash": "a" * 12},
        {"name": "ok", "hash": "g" * 64},
        {"name": "ok"},
        {"name": "Bad", "hash": "a" * 64},
    ],
)
def test_host_validates_role_params(tmp_path: Path, params: dict[str, object]) -> None:
    class Ctx:
        root = str(tmp_path)

    with pytest.raises(RemoteError) as caught:
        host_roles.role_status(Ctx(), params)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_params"


# ---- git sources ---------------------------------------------------------------------------


def test_path_sources_are_not_git() -> None:
    assert parse_git_source("roles/test-agent") is None
    assert parse_git_source("/abs/role#x") is None


@pytest.mark.parametrize(
    ("source", "url", "ref"),
    [
        ("git+file:///srv/roles", "file:///srv/roles", None),
        ("git+file:///srv/roles#main", "file:///srv/roles", "main"),
        ("https://example.invalid/r.git#v1.2", "https://example.invalid/r.git", "v1.2"),
        ("git+ssh://git@example.invalid/r.git#feature/x", "ssh://git@example.invalid/r.git",
         "feature/x"),
    ],
)  # fmt: skip
def test_git_sources_parse(source: str, url: str, ref: str | None) -> None:
    parsed = parse_git_source(source)
    assert parsed is not None and (parsed.url, parsed.ref) == (url, ref)


@pytest.mark.parametrize(
    "source",
    ["git+ext::sh -c evil", "git+file://", "git+-upload-pack=x", "https://a b/r",
     "git+file:///r#--upload-pack=x", "git+file:///r#a..b", "git+file:///r#"],
)  # fmt: skip
def test_bad_git_sources_are_refused(source: str) -> None:
    with pytest.raises(RoleError) as caught:
        parse_git_source(source)
    assert caught.value.hint


def git_repo_with_role(tmp_path: Path) -> tuple[Path, str]:
    repo = make_role(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    (repo / "jackin.role.toml").write_text(GOOD.replace('"demo"', '"demo-two"'))
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    return repo, first.stdout.strip()


def test_git_role_is_fetched_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jh"))
    repo, first_commit = git_repo_with_role(tmp_path)
    head = load_role(f"git+file://{repo}#main")
    assert head.name == "demo-two"
    assert head.directory.parent == tmp_path / "jh" / "cache" / "roles"
    assert (head.directory / ".git" / "shallow").is_file()  # fetched with --depth 1
    old = load_role(f"git+file://{repo}#{first_commit}")
    assert old.name == "demo" and old.directory != head.directory
    # The same content hashes the same wherever it came from (.git is not content).
    assert load_role(f"git+file://{repo}").content_hash == load_role(repo).content_hash
    # Loading again replaces the checkout; no temp dirs are left behind.
    load_role(f"git+file://{repo}#main")
    leftovers = [p.name for p in head.directory.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_git_role_with_an_unknown_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKIN_HOME", str(tmp_path / "jh"))
    repo, _ = git_repo_with_role(tmp_path)
    err = role_error(f"git+file://{repo}#nope")
    assert "cannot fetch the role" in str(err) and "nope" in str(err)
    assert [p for p in (tmp_path / "jh" / "cache" / "roles").iterdir()] == []


def test_a_local_git_work_tree_is_just_a_directory(tmp_path: Path) -> None:
    repo, _ = git_repo_with_role(tmp_path)
    (repo / "uncommitted").write_text("counts")
    role = load_role(repo)
    assert role.directory == repo.resolve()
    assert "uncommitted" in {e.path for e in tree.snapshot(role.directory)}


def test_role_is_frozen(tmp_path: Path) -> None:
    role = load_role(make_role(tmp_path / "r"))
    with pytest.raises(AttributeError):
        role.name = "x"  # type: ignore[misc]
    assert isinstance(role, Role)


def test_host_reports_an_unreachable_docker_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")

    class Ctx:
        root = str(tmp_path)

    for handler in (host_roles.role_status, host_roles.role_build):
        params = {"name": "demo", "hash": "a" * 64, "user": "agent", "dockerfile": "Dockerfile"}
        with pytest.raises(RemoteError) as caught:
            handler(Ctx(), params)  # type: ignore[arg-type]
        assert caught.value.code == "docker_unavailable", caught.value.message
        assert "cannot reach the docker engine" in caught.value.message
