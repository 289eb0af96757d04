import errno
import io
import os

import pytest

from lebench_cli.errors import InputError
from lebench_cli.audio.inputs import AUDIO_EXTENSIONS, AudioSource, discover


def touch(root, *relpaths):
    for relpath in relpaths:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def ids(sources):
    return [source.utt_id for source in sources]


def error_of(*args, **kwargs):
    with pytest.raises(InputError) as caught:
        discover(*args, **kwargs)
    return str(caught.value)


def test_folder_is_walked_recursively_sorted_and_filtered(tmp_path):
    touch(tmp_path, "b.wav", "a/c.WAV", "a/b/d.flac", "a/x.Mp3", "notes.txt", "a/readme.md", "a/wav")
    sources = discover([str(tmp_path)])
    assert ids(sources) == ["a/b/d", "a/c", "a/x", "b"]
    assert sources[0] == AudioSource("a/b/d", os.path.join(str(tmp_path), "a", "b", "d.flac"))
    assert all(source.num_samples is None for source in sources)


def test_extensions_are_matched_case_insensitively(tmp_path):
    touch(tmp_path, "a.WAV", "b.flac", "c.Flac")
    assert ids(discover([str(tmp_path)], extensions=[".FLAC"])) == ["b", "c"]


def test_symlink_cycle_is_not_followed(tmp_path):
    touch(tmp_path, "data/a.wav")
    os.symlink(tmp_path / "data", tmp_path / "data" / "loop")
    assert ids(discover([str(tmp_path / "data")])) == ["a"]


def test_empty_folder_gives_no_sources(tmp_path):
    assert discover([str(tmp_path)]) == []


def test_unreadable_subfolder_is_an_error(tmp_path, monkeypatch):
    touch(tmp_path, "a/x.wav", "b/y.wav")
    blocked = os.path.join(str(tmp_path), "b")
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == blocked:
            raise PermissionError(errno.EACCES, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert error_of([str(tmp_path)]) == f"cannot read folder {blocked}: permission denied"


def test_inputs_keep_their_order(tmp_path):
    touch(tmp_path, "z/one.wav", "a/two.wav", "solo.flac")
    sources = discover([str(tmp_path / "z"), str(tmp_path / "solo.flac"), str(tmp_path / "a")])
    assert [os.path.basename(source.path) for source in sources] == ["one.wav", "solo.flac", "two.wav"]


def test_single_file_id_is_the_normalised_path_without_extension(tmp_path, monkeypatch):
    touch(tmp_path, "a/b.wav")
    monkeypatch.chdir(tmp_path)
    assert discover(["./a/b.wav"]) == [AudioSource("a/b", "./a/b.wav")]


def test_stdin_lists_paths_and_keeps_missing_ones(tmp_path, monkeypatch):
    touch(tmp_path, "a/x.wav")
    monkeypatch.chdir(tmp_path)
    stdin = io.StringIO("  a/x.wav \n\n   \n#odd.wav\n./missing/y.flac\n")
    assert discover(["-"], stdin=stdin) == [
        AudioSource("a/x", "a/x.wav"),
        AudioSource("#odd", "#odd.wav"),
        AudioSource("missing/y", "./missing/y.flac"),
    ]


def test_stdin_given_twice_is_an_error():
    assert error_of(["-", "-"], stdin=io.StringIO("")) == "'-' (paths on standard input) given more than once"


def test_tsv_manifest_with_and_without_sample_counts(tmp_path):
    manifest = tmp_path / "train.tsv"
    manifest.write_text("/corpus/root\nspk1/a.wav\t16000\nspk2/b.flac\n\n")
    assert discover([str(manifest)]) == [
        AudioSource("spk1/a", "/corpus/root/spk1/a.wav", 16000),
        AudioSource("spk2/b", "/corpus/root/spk2/b.flac", None),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("b.wav\tabc", "bad sample count 'abc' (expected a whole number)"),
        ("b.wav\t-5", "bad sample count '-5' (expected a whole number)"),
        ("b.wav\t", "bad sample count '' (expected a whole number)"),
        ("\t100", "empty path"),
        ("b.wav\t100\textra", "expected 'path<TAB>samples', found 3 tab-separated fields"),
    ],
)
def test_malformed_manifest_line_names_file_and_line(tmp_path, line, message):
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"/root\na.wav\t10\n{line}\n")
    assert error_of([str(manifest)]) == f"{manifest}:3: {message}"


def test_missing_input_is_an_error(tmp_path):
    missing = str(tmp_path / "nope.wav")
    assert error_of([missing]) == f"no such file or folder: {missing}"


def test_wrong_extension_is_an_error(tmp_path):
    touch(tmp_path, "notes.txt")
    notes = str(tmp_path / "notes.txt")
    assert error_of([notes], extensions=["wav", "flac"]) == (
        f"{notes}: not an audio file or .tsv manifest (extensions: wav, flac)"
    )
    assert error_of([notes]) == (
        f"{notes}: not an audio file or .tsv manifest (extensions: wav, flac, ogg, oga, opus, mp3, ...)"
    )
    assert AUDIO_EXTENSIONS[:6] == ("wav", "flac", "ogg", "oga", "opus", "mp3")


def test_duplicate_ids_name_both_paths(tmp_path):
    touch(tmp_path, "a/x.flac", "a/x.wav")
    first, second = os.path.join(str(tmp_path), "a", "x.flac"), os.path.join(str(tmp_path), "a", "x.wav")
    assert error_of([str(tmp_path)]) == (
        f"duplicate utterance id 'a/x': {first} and {second} (two formats of one file? pick one with "
        "--ext flac or --ext wav)"
    )


def test_duplicate_ids_across_inputs(tmp_path, monkeypatch):
    touch(tmp_path, "a/b.wav")
    monkeypatch.chdir(tmp_path)
    assert error_of(["a/b.wav", "-"], stdin=io.StringIO("./a/b.wav\n")) == (
        "duplicate utterance id 'a/b': a/b.wav and ./a/b.wav"
    )


def test_the_default_walk_takes_speech_formats_not_every_type_libsndfile_reads(tmp_path):
    """MATLAB, HTK, SD2, XI, VOC and raw files beside a corpus are labels, features or
    instrument samples: skipped unless asked for with extensions (--ext)."""
    touch(tmp_path, "a.wav", "a.mat", "a.htk", "b.sd2", "c.xi", "d.voc", "e.raw", "f.flac", "g.opus", "h.aiff",
          "i.au", "j.caf", "k.w64", "l.rf64", "m.sph", "n.nist", "o.mp3", "p.ogg")
    assert ids(discover([str(tmp_path)])) == ["a", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"]
    for banned in ("mat", "htk", "sd2", "xi", "voc", "raw", "wv"):
        assert banned not in AUDIO_EXTENSIONS
    assert [s.path for s in discover([str(tmp_path)], extensions=["mat", "xi"])] == [
        os.path.join(str(tmp_path), "a.mat"), os.path.join(str(tmp_path), "c.xi")]


LATIN1 = b"caf\xe9"  # 'café' in Latin-1: not UTF-8


def test_a_name_that_is_not_utf8_gets_an_id_with_its_bytes_escaped(tmp_path):
    folder = os.fsencode(tmp_path / "corpus")
    os.makedirs(os.path.join(folder, LATIN1))
    open(os.path.join(folder, LATIN1, LATIN1 + b".wav"), "wb").close()
    (source,) = discover([str(tmp_path / "corpus")])
    assert source.utt_id == "caf\\xe9/caf\\xe9"
    assert source.utt_id.encode("utf-8")  # storable as UTF-8
    assert os.fsencode(source.path) == os.path.join(folder, LATIN1, LATIN1 + b".wav")  # opens the file itself


def test_stdin_paths_that_are_not_utf8_are_read_as_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stdin = io.TextIOWrapper(io.BytesIO(b"x/" + LATIN1 + b".wav\nx/ok.wav\n"))
    sources = discover(["-"], stdin=stdin)
    assert ids(sources) == ["x/caf\\xe9", "x/ok"]
    assert os.fsencode(sources[0].path) == b"x/" + LATIN1 + b".wav"


NFC, NFD = "caf\u00e9", "cafe\u0301"


def test_ids_are_nfc_whatever_the_spelling_of_the_name(tmp_path):
    touch(tmp_path, f"{NFD}/{NFD}.wav", "x.wav")
    sources = discover([str(tmp_path)])
    assert ids(sources) == [f"{NFC}/{NFC}", "x"]
    assert sources[0].path == os.path.join(str(tmp_path), NFD, NFD + ".wav")  # the file as it is named
    assert ids(discover([str(tmp_path)], id_prefix=f"{NFD}/")) == [f"{NFC}/{NFC}/{NFC}", f"{NFC}/x"]


def test_two_names_differing_only_in_normalisation_are_a_clash(tmp_path):
    touch(tmp_path, f"{NFC}.wav", f"{NFD}.wav")
    first, second = sorted([os.path.join(str(tmp_path), f"{NFC}.wav"), os.path.join(str(tmp_path), f"{NFD}.wav")])
    assert error_of([str(tmp_path)]) == (
        f"duplicate utterance id '{NFC}': {first} and {second} (their names differ only in Unicode "
        "normalisation, NFC and NFD: rename one)"
    )


def test_a_name_that_is_not_utf8_clashing_with_its_escaped_spelling(tmp_path):
    folder = os.fsencode(tmp_path)
    open(os.path.join(folder, LATIN1 + b".wav"), "wb").close()
    open(os.path.join(folder, b"caf\\xe9.wav"), "wb").close()
    assert error_of([str(tmp_path)]) == (
        f"duplicate utterance id 'caf\\xe9': {tmp_path}/caf\\xe9.wav and {tmp_path}/caf\\xe9.wav (one name has "
        "bytes that are not UTF-8, the other spells them \\xNN: rename one)"
    )
