"""Tests for the Cityscapes downloader against a small fake site on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import traceback
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from test_workflow import REPO, snakemake, write_config

from vocabseg.data import download
from vocabseg.data.download import PACKAGES, DownloadError, download_cityscapes

# Distinctive values, so any leak is easy to spot.
USERNAME = "user-Kq7ZpW3x"
PASSWORD = "pw-Vt9#Lm2!Qr8s"
SECRETS = (USERNAME, PASSWORD)
COOKIE = "sessionid=fake-session-4711"

GT = "gtFine_trainvaltest.zip"
IMG = "leftImg8bit_trainvaltest.zip"


# --------------------------------------------------------------------------- fake data


def fake_tree() -> dict[str, dict[str, bytes]]:
    """Members of the two tiny zips, shaped like the official ones."""
    blob = bytes(range(256)) * 800  # ~200 KB, so downloads take several chunks
    gt = {
        "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json": b'{"objects": []}',
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png": b"PNG-gt-train",
        "gtFine/val/lindau/lindau_000000_000019_gtFine_polygons.json": b'{"objects": [1]}',
        "gtFine/test/berlin/berlin_000000_000019_gtFine_polygons.json": b'{"objects": [2]}',
        "license.txt": b"license",
        "README": b"readme",
    }
    img = {
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png": blob,
        "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png": blob[::-1],
        "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png": b"PNG-test",
        "license.txt": b"license",
        "README": b"readme",
    }
    return {GT: gt, IMG: img}


def make_zip(members: dict[str, bytes]) -> bytes:
    """A stored (uncompressed) zip, so member bytes appear verbatim in it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zips() -> dict[str, bytes]:
    """Package name -> zip bytes."""
    return {name: make_zip(members) for name, members in fake_tree().items()}


# --------------------------------------------------------------------------- fake site


@dataclass
class SiteState:
    """What the fake site serves, its switches, and what it was asked."""

    files: dict[int, tuple[str, bytes]]
    md5_override: dict[int, str] = field(default_factory=dict)
    drop_at: int | None = None  # absolute byte where the next download is cut (one shot)
    honour_range: bool = True
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def paths(self, prefix: str) -> list[tuple[str, str, dict[str, str]]]:
        """Requests whose path starts with ``prefix``."""
        return [r for r in self.requests if r[1].startswith(prefix)]


class FakeCityscapes(BaseHTTPRequestHandler):
    """The few endpoints of the Cityscapes site that the downloader uses."""

    state: SiteState  # set on a subclass per server

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""

    def _record(self) -> None:
        self.state.requests.append((self.command, self.path, dict(self.headers.items())))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _package(self) -> tuple[int, str, bytes] | None:
        query = parse_qs(urlsplit(self.path).query)
        package_id = int(query.get("packageID", ["-1"])[0])
        if package_id not in self.state.files:
            return None
        name, data = self.state.files[package_id]
        return package_id, name, data

    def _logged_in(self) -> bool:
        return COOKIE in self.headers.get("Cookie", "")

    def do_GET(self) -> None:
        self._record()
        route = urlsplit(self.path).path
        if route == "/login":
            return self._reply(200, b"<html>login form</html>")
        if not self._logged_in():
            return self._reply(302, headers={"Location": "/login"})
        package = self._package()
        if package is None:
            return self._reply(404, b"no such package")
        if route == "/md5-sum/":
            package_id, name, data = package
            md5 = self.state.md5_override.get(package_id, hashlib.md5(data).hexdigest())
            return self._reply(200, f"{md5}  {name}\n".encode())
        if route == "/file-handling/":
            return self._send_file(package[2])
        return self._reply(404)

    def _send_file(self, data: bytes) -> None:
        start = 0
        range_header = self.headers.get("Range", "")
        if range_header and self.state.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._reply(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        end = len(data)
        if self.state.drop_at is not None:
            end, self.state.drop_at = max(start, self.state.drop_at), None
            self.close_connection = True
        self.wfile.write(data[start:end])
        self.wfile.flush()

    def do_POST(self) -> None:
        self._record()
        if urlsplit(self.path).path != "/login":
            return self._reply(404)
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        good = (
            form.get("username") == [USERNAME]
            and form.get("password") == [PASSWORD]
            and form.get("submit") == ["Login"]
        )
        if good:
            return self._reply(302, headers={"Location": "/", "Set-Cookie": f"{COOKIE}; Path=/"})
        return self._reply(200, b"<html>wrong credentials</html>")


@pytest.fixture
def site(zips):
    """A running fake site; yields (base_url, state)."""
    state = SiteState(files={PACKAGES[name]: (name, data) for name, data in zips.items()})
    handler = type("Handler", (FakeCityscapes,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- environment and helpers


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, capfd):
    """No real credentials leak in; no secret leaks out to stdout/stderr."""
    monkeypatch.delenv(download.USERNAME_ENV, raising=False)
    monkeypatch.delenv(download.PASSWORD_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(download, "CHUNK_SIZE", 16 * 1024)
    monkeypatch.setattr(download, "TIMEOUT", (5.0, 10.0))
    monkeypatch.setattr(download, "RETRY_DELAY", 0.0)
    yield
    out, err = capfd.readouterr()
    assert_clean(out + err)


@pytest.fixture
def logs() -> list[str]:
    """Collected log lines; checked for secrets when the test ends."""
    lines: list[str] = []
    yield lines
    assert_clean("\n".join(lines))


@pytest.fixture
def creds_file(tmp_path) -> Path:
    """A good credentials file outside the dataset folder."""
    path = tmp_path / "secrets" / "cityscapes.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"username": USERNAME, "password": PASSWORD}))
    return path


def assert_clean(text: str) -> None:
    """Neither the username nor the password appear in ``text``."""
    for secret in SECRETS:
        assert secret not in text


def assert_no_secret_on_disk(root: Path) -> None:
    """No file under ``root`` contains a credential."""
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, path


def expect_error(*args, **kwargs) -> str:
    """Call download_cityscapes expecting a DownloadError; return its clean message."""
    with pytest.raises(DownloadError) as info:
        download_cityscapes(*args, **kwargs)
    assert_clean("".join(traceback.format_exception(info.value)))
    return str(info.value)


def assert_extracted(dest: Path, packages=(GT, IMG)) -> None:
    """Every member of the fake zips is in place, byte for byte, plus the markers."""
    tree = fake_tree()
    for package in packages:
        for name, data in tree[package].items():
            assert (dest / name).read_bytes() == data
        marker = dest / ".extracted" / f"{package}.done"
        assert marker.is_file()


def place_zip(dest: Path, name: str, data: bytes) -> Path:
    """Put a zip where the user would put an already-downloaded one."""
    path = dest / "zips" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- tests


def test_full_download_and_extract(site, tmp_path, creds_file, logs, zips):
    """Both packages are downloaded, md5-checked, extracted and marked."""
    base_url, state = site
    dest = tmp_path / "cityscapes"
    download_cityscapes(dest, credentials_file=creds_file, base_url=base_url, log=logs.append)

    assert_extracted(dest)
    for name in (GT, IMG):
        assert (dest / "zips" / name).read_bytes() == zips[name]
        marker = dest / ".extracted" / f"{name}.done"
        assert marker.read_text().strip() == hashlib.md5(zips[name]).hexdigest()
        assert not (dest / "zips" / f"{name}.part").exists()
    assert len(state.paths("/file-handling/")) == 2
    assert len(state.paths("/md5-sum/")) == 2
    assert any("%" in line for line in logs), "progress is reported"
    assert_no_secret_on_disk(dest)


def test_credentials_from_environment(site, tmp_path, monkeypatch, logs):
    """The two environment variables are enough."""
    base_url, _ = site
    monkeypatch.setenv(download.USERNAME_ENV, USERNAME)
    monkeypatch.setenv(download.PASSWORD_ENV, PASSWORD)
    download_cityscapes(tmp_path / "cs", [GT], base_url=base_url, log=logs.append)
    assert_extracted(tmp_path / "cs", [GT])


def test_credentials_from_cityscapesscripts_file(site, tmp_path, logs):
    """cityscapesscripts' own credentials.json (under XDG_DATA_HOME here) is used last."""
    base_url, _ = site
    stored = tmp_path / "xdg" / "cityscapesscripts" / "credentials.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps({"username": USERNAME, "password": PASSWORD}))
    download_cityscapes(tmp_path / "cs", [GT], base_url=base_url, log=logs.append)
    assert_extracted(tmp_path / "cs", [GT])


def test_resume_from_partial_file(site, tmp_path, creds_file, logs, zips):
    """An existing .part is continued with a Range request and a 206 answer."""
    base_url, state = site
    dest = tmp_path / "cs"
    half = len(zips[IMG]) // 2
    place_zip(dest, IMG + ".part", zips[IMG][:half])

    download_cityscapes(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append
    )

    (request,) = state.paths("/file-handling/")
    assert request[2].get("Range") == f"bytes={half}-"
    assert (dest / "zips" / IMG).read_bytes() == zips[IMG]
    assert_extracted(dest, [IMG])


def test_server_ignoring_range_restarts(site, tmp_path, creds_file, logs, zips):
    """A 200 answer to a Range request overwrites the .part instead of appending."""
    base_url, state = site
    state.honour_range = False
    dest = tmp_path / "cs"
    place_zip(dest, IMG + ".part", b"garbage that must not end up in the zip")

    download_cityscapes(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append
    )

    assert (dest / "zips" / IMG).read_bytes() == zips[IMG]
    assert_extracted(dest, [IMG])


def test_interrupted_transfer_keeps_part_and_resumes(site, tmp_path, creds_file, logs, zips):
    """A dropped connection leaves the .part; the next call resumes and finishes."""
    base_url, state = site
    dest = tmp_path / "cs"
    cut = len(zips[IMG]) // 3
    state.drop_at = cut

    message = expect_error(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append
    )
    assert "/file-handling/?packageID=3" in message and IMG in message
    part = dest / "zips" / (IMG + ".part")
    assert 0 < part.stat().st_size <= cut
    assert not (dest / "zips" / IMG).exists()
    assert not (dest / "leftImg8bit").exists()

    kept = part.stat().st_size
    download_cityscapes(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append
    )
    assert state.paths("/file-handling/")[-1][2].get("Range") == f"bytes={kept}-"
    assert (dest / "zips" / IMG).read_bytes() == zips[IMG]
    assert_extracted(dest, [IMG])


def test_md5_mismatch_after_download(site, tmp_path, creds_file, logs):
    """A download whose md5 differs is kept as .corrupt and nothing is extracted."""
    base_url, state = site
    state.md5_override[PACKAGES[IMG]] = "0" * 32
    dest = tmp_path / "cs"

    message = expect_error(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append
    )
    assert IMG in message and "md5" in message
    assert (dest / "zips" / (IMG + ".corrupt")).is_file()
    assert not (dest / "zips" / IMG).exists()
    assert not (dest / "zips" / (IMG + ".part")).exists()
    assert not (dest / "leftImg8bit").exists()
    assert not (dest / ".extracted" / f"{IMG}.done").exists()


def test_md5_mismatch_of_placed_zip(site, tmp_path, creds_file, logs, zips):
    """A user-supplied zip is checked against the site's md5 when credentials exist."""
    base_url, state = site
    dest = tmp_path / "cs"
    place_zip(dest, GT, zips[IMG])  # a valid zip, but the wrong one

    message = expect_error(
        dest, [GT], credentials_file=creds_file, base_url=base_url, log=logs.append
    )
    assert GT in message
    assert (dest / "zips" / (GT + ".corrupt")).read_bytes() == zips[IMG]
    assert not (dest / "leftImg8bit").exists() and not (dest / "gtFine").exists()
    assert not state.paths("/file-handling/"), "a placed zip is never re-downloaded"


def test_markers_present_means_no_network_and_no_credentials(site, tmp_path, creds_file, logs):
    """A second run with all markers in place sends nothing and needs no credentials."""
    base_url, state = site
    dest = tmp_path / "cs"
    download_cityscapes(dest, credentials_file=creds_file, base_url=base_url, log=logs.append)
    state.requests.clear()
    for zip_file in (dest / "zips").iterdir():
        zip_file.unlink()  # not even the zips are needed any more

    download_cityscapes(dest, base_url=base_url, log=logs.append)

    assert state.requests == []
    assert_extracted(dest)


def test_no_credentials_and_no_zips(site, tmp_path, logs):
    """The message tells every way to provide credentials, or where to put the zips."""
    base_url, state = site
    dest = tmp_path / "cs"
    message = expect_error(dest, base_url=base_url, log=logs.append)

    assert "--credentials" in message
    assert download.USERNAME_ENV in message and download.PASSWORD_ENV in message
    assert str(tmp_path / "xdg" / "cityscapesscripts" / "credentials.json") in message
    assert str(dest / "zips") in message
    assert GT in message and IMG in message
    assert state.requests == []


def test_placed_zips_without_credentials_are_extracted_offline(site, tmp_path, logs, zips):
    """Zips in zips_dir and no credentials: CRC check, extraction, no network."""
    base_url, state = site
    dest = tmp_path / "cs"
    zips_dir = tmp_path / "my-zips"
    zips_dir.mkdir()
    for name, data in zips.items():
        (zips_dir / name).write_bytes(data)

    download_cityscapes(dest, zips_dir=zips_dir, base_url=base_url, log=logs.append)

    assert_extracted(dest)
    assert state.requests == []
    assert any("md5 could not be checked" in line for line in logs)


def test_corrupt_placed_zip_without_credentials(site, tmp_path, logs, zips):
    """A zip failing its CRC check is named in the error and renamed to .corrupt."""
    base_url, _ = site
    dest = tmp_path / "cs"
    data = bytearray(zips[IMG])
    payload = fake_tree()[IMG]["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"]
    offset = bytes(data).index(payload) + 1000
    data[offset] ^= 0xFF
    place_zip(dest, IMG, bytes(data))

    message = expect_error(dest, [IMG], base_url=base_url, log=logs.append)

    assert IMG in message and "corrupt" in message
    assert (dest / "zips" / (IMG + ".corrupt")).is_file()
    assert not (dest / "leftImg8bit").exists()


def test_truncated_placed_zip_without_credentials(site, tmp_path, logs, zips):
    """A zip that is not even readable as a zip is reported the same way."""
    base_url, _ = site
    dest = tmp_path / "cs"
    place_zip(dest, GT, zips[GT][: len(zips[GT]) // 2])

    message = expect_error(dest, [GT], base_url=base_url, log=logs.append)
    assert GT in message
    assert (dest / "zips" / (GT + ".corrupt")).is_file()


def test_wrong_password_is_refused(site, tmp_path, logs):
    """A 200 answer to the login POST means the credentials were refused."""
    base_url, state = site
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"username": USERNAME, "password": PASSWORD + "-wrong"}))

    message = expect_error(
        tmp_path / "cs", credentials_file=bad, base_url=base_url, log=logs.append
    )

    assert "login refused for the given credentials" in message
    assert PASSWORD + "-wrong" not in message
    assert not state.paths("/file-handling/")


def test_network_error_names_path_without_credentials(tmp_path, creds_file, logs):
    """An unreachable site gives a DownloadError without any credential in it."""
    import socket

    with socket.socket() as probe:  # a free port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = expect_error(
        tmp_path / "cs",
        [GT],
        credentials_file=creds_file,
        base_url=f"http://127.0.0.1:{port}",
        log=logs.append,
    )
    assert "/login" in message


@pytest.mark.parametrize(
    "content",
    [
        "{not json " + PASSWORD,
        json.dumps({"user": USERNAME, "password": PASSWORD}),
        json.dumps([USERNAME, PASSWORD]),
    ],
    ids=["bad-json", "missing-key", "not-an-object"],
)
def test_malformed_credentials_file(site, tmp_path, logs, content):
    """The error names the file and the keys, never its content."""
    base_url, state = site
    path = tmp_path / "creds.json"
    path.write_text(content)

    message = expect_error(
        tmp_path / "cs", credentials_file=path, base_url=base_url, log=logs.append
    )

    assert str(path) in message
    assert "username" in message and "password" in message
    assert state.requests == []


def test_missing_credentials_file(tmp_path, logs):
    """An explicitly given file that does not exist is an error, not a silent fallback."""
    path = tmp_path / "nope.json"
    message = expect_error(tmp_path / "cs", credentials_file=path, log=logs.append)
    assert str(path) in message


def test_zip_slip_member_rejected(site, tmp_path, logs, zips):
    """A member with '..' (or an absolute path) stops the extraction before anything is written."""
    base_url, _ = site
    dest = tmp_path / "cs"
    members = dict(fake_tree()[GT])
    members["../escaped.txt"] = b"outside"
    place_zip(dest, GT, make_zip(members))

    message = expect_error(dest, [GT], base_url=base_url, log=logs.append)

    assert "../escaped.txt" in message
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "gtFine").exists()
    assert not (dest / ".extracted" / f"{GT}.done").exists()


@pytest.mark.parametrize("name", ["/etc/evil", "gtFine/../../evil", "C:/evil", "a\\..\\..\\evil"])
def test_unsafe_member_names(name):
    """Absolute paths, drive letters and '..' (with either slash) are unsafe."""
    assert download._unsafe_reason(name) is not None
    assert download._unsafe_reason("gtFine/train/aachen/x.png") is None


def test_unknown_package_name(site, tmp_path, logs):
    """The error lists the known package names and nothing is requested."""
    base_url, state = site
    message = expect_error(tmp_path / "cs", ["gtFine.zip"], base_url=base_url, log=logs.append)
    assert "gtFine.zip" in message
    for known in PACKAGES:
        assert known in message
    assert state.requests == []


def test_complete_part_file_is_accepted(site, tmp_path, creds_file, logs, zips):
    """A .part that already holds everything (416 to the Range request) is verified and used."""
    base_url, state = site
    dest = tmp_path / "cs"
    place_zip(dest, GT + ".part", zips[GT])

    download_cityscapes(dest, [GT], credentials_file=creds_file, base_url=base_url, log=logs.append)

    assert (dest / "zips" / GT).read_bytes() == zips[GT]
    assert_extracted(dest, [GT])


# --------------------------------------------------------------------------- failures: cause and data kept


def corrupt(data: bytes) -> bytes:
    """``data`` with one byte of an image flipped: the zip opens, a member fails its CRC."""
    payload = fake_tree()[IMG]["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"]
    damaged = bytearray(data)
    damaged[bytes(data).index(payload) + 1000] ^= 0xFF
    return bytes(damaged)


def test_network_failure_is_retried_in_place(site, tmp_path, creds_file, logs, zips):
    """A dropped connection is tried again within the call, resuming the .part file."""
    base_url, state = site
    state.drop_at = len(zips[IMG]) // 3
    dest = tmp_path / "cs"
    download_cityscapes(
        dest, [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append, network_attempts=2
    )
    assert_extracted(dest, [IMG])
    assert any("network attempt 1 of 2" in line for line in logs)
    assert state.paths("/file-handling/")[-1][2].get("Range", "").startswith("bytes=")


def test_user_errors_are_not_retried(site, tmp_path, creds_file, logs):
    """An md5 mismatch is the user's to fix: raised at once, one download only."""
    base_url, state = site
    state.md5_override[PACKAGES[IMG]] = "0" * 32
    message = expect_error(
        tmp_path / "cs", [IMG], credentials_file=creds_file, base_url=base_url, log=logs.append, network_attempts=3
    )
    assert "md5" in message and len(state.paths("/file-handling/")) == 1
    assert not any("network attempt" in line for line in logs)


def test_staging_keeps_verified_packages_and_moves_when_complete(site, tmp_path, logs, zips):
    """A corrupt second zip leaves the first one extracted in staging, dest absent; the
    next call after the fix extracts only the second one and renames staging to dest."""
    base_url, _ = site
    dest, staging, zips_dir = tmp_path / "raw", tmp_path / "raw.staging", tmp_path / "zips"
    zips_dir.mkdir()
    (zips_dir / GT).write_bytes(zips[GT])
    (zips_dir / IMG).write_bytes(corrupt(zips[IMG]))

    message = expect_error(dest, zips_dir=zips_dir, staging=staging, base_url=base_url, log=logs.append)
    assert IMG in message and "corrupt" in message
    assert not dest.exists()
    assert_extracted(staging, [GT])

    (zips_dir / f"{IMG}.corrupt").unlink()
    (zips_dir / IMG).write_bytes(zips[IMG])
    logs.clear()
    download_cityscapes(dest, zips_dir=zips_dir, staging=staging, base_url=base_url, log=logs.append)
    assert_extracted(dest)
    assert not staging.exists()
    assert f"{GT}: already extracted in {staging}" in logs


def test_workflow_download_ends_with_the_cause_and_keeps_gtfine(tmp_path, zips):
    """As a user runs it: a Cityscapes study with a corrupt leftImg8bit zip, no credentials
    and the cluster profiles' `--retries 2`. One attempt; its log ends with the corrupt
    zip, not with "credentials needed"; the extracted gtFine survives the failed job."""
    zips_dir = tmp_path / "my-zips"
    zips_dir.mkdir()
    (zips_dir / GT).write_bytes(zips[GT])
    (zips_dir / IMG).write_bytes(corrupt(zips[IMG]))
    config = yaml.safe_load((REPO / "config/cityscapes-r50.yaml").read_text())
    config["dataset"]["cityscapes"]["zips"] = str(zips_dir)
    path = write_config(tmp_path / "study.yaml", config)
    work = tmp_path / "work"
    target = "resources/cityscapes/raw"

    res = snakemake(work, "--configfile", str(path), "--cores", "1", "--retries", "2", target)
    assert res.returncode != 0
    log = (work / "logs/cityscapes/download_cityscapes.log").read_text().strip().splitlines()
    assert log[-1].startswith(f"error: {zips_dir / IMG} is corrupt"), log[-1]
    assert not any("credentials are needed" in line for line in log)
    assert "Trying to restart job" not in res.stdout + res.stderr
    assert not (work / target).exists()
    assert_extracted(work / "resources/cityscapes/raw.staging", [GT])

    (zips_dir / f"{IMG}.corrupt").unlink()
    (zips_dir / IMG).write_bytes(zips[IMG])
    res = snakemake(work, "--configfile", str(path), "--cores", "1", target)
    assert res.returncode == 0, res.stderr
    assert_extracted(work / target)
    assert not (work / "resources/cityscapes/raw.staging").exists()
    assert f"{GT}: already extracted" in (work / "logs/cityscapes/download_cityscapes.log").read_text()
