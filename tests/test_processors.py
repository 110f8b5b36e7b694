"""worker/processors: kind selection, DUMMY/FAILTEST, image handling, and a real pero-ocr PageParser run."""
from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import ocr_model_factory  # tests/ helper: pytest puts tests/ on sys.path (rootdir conftest)
import pytest
from lxml import etree

from pero_worker.libs.message_pb2 import ProcessingRequest
from pero_worker.worker.processors import (
    ProcessingError,
    StageConfigError,
    build_processor,
    dummy,
    images,
    parse_stage_config,
    pero_ocr_stage,
    select_processor_kind,
    with_worker_keys,
)

PAGE_NS = "{http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15}"


def _request(*results: tuple[str, bytes]) -> ProcessingRequest:
    request = ProcessingRequest(uuid="r1", processing_stages=["ocr", "out"])
    for name, content in results:
        request.results.add(name=name, content=content)
    return request


# --- kind selection ---------------------------------------------------------------------

KIND_TABLE = [
    ("[PAGE_PARSER]\nRUN_OCR = yes\n", "PERO_OCR"),
    ("", "PERO_OCR"),
    ("[WORKER]\n", "PERO_OCR"),
    ("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 2\n", "DUMMY"),
    ("[WORKER]\nDUMMY = true\n", "DUMMY"),
    ("[WORKER]\ndummy = yes\n", "DUMMY"),
    ("[WORKER]\nDUMMY = FALSE\n", "PERO_OCR"),
    ("[WORKER]\nFAILTEST = TRUE\n", "FAILTEST"),
    ("[WORKER]\nFAILTEST = 1\nDUMMY = 0\n", "FAILTEST"),
    ("[WORKER]\nMETHOD = DUMMY\n", "DUMMY"),
    ("[WORKER]\nMETHOD = failtest\n", "FAILTEST"),
    ("[WORKER]\nMETHOD = LAYOUT\n", "LAYOUT"),
    ("[WORKER]\nMETHOD = PERO_OCR\n", "PERO_OCR"),
    ("[WORKER]\nMETHOD = DUMMY\nDUMMY = TRUE\n", "DUMMY"),
    ("[WORKER]\nMETHOD = \nFAILTEST = TRUE\n", "FAILTEST"),
    ("[WORKER]\nMETHOD = SOMETHING\n", StageConfigError),
    ("[WORKER]\nDUMMY = maybe\n", StageConfigError),
    ("[WORKER]\nDUMMY = TRUE\nFAILTEST = TRUE\n", StageConfigError),
    ("[WORKER]\nMETHOD = PERO_OCR\nDUMMY = TRUE\n", StageConfigError),
    ("[WORKER]\nDUMMY = %(undefined)s\n", StageConfigError),    # no interpolation surprises
]


@pytest.mark.parametrize("text,expected", KIND_TABLE)
def test_select_processor_kind_table(text, expected):
    config = parse_stage_config(text)
    if expected is StageConfigError:
        with pytest.raises(StageConfigError):
            select_processor_kind(config)
    else:
        assert select_processor_kind(config) == expected


@pytest.mark.parametrize("text", [
    "no section header\n", "[A]\nx = 1\n[A]\ny = 2\n", "[A]\nx = 1\nx = 2\n", "[A\n",
])
def test_malformed_config_is_a_stage_config_error(text):
    with pytest.raises(StageConfigError, match="not a valid INI"):
        build_processor(text, None)


def test_layout_kind_dispatches_to_layout_stage(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("pero_worker.worker.processors.layout_stage")
    fake.build = lambda config, model_dir: calls.append((config["WORKER"]["METHOD"], model_dir)) or "layout!"
    monkeypatch.setitem(sys.modules, "pero_worker.worker.processors.layout_stage", fake)
    assert build_processor("[WORKER]\nMETHOD = LAYOUT\n", tmp_path) == "layout!"
    assert calls == [("LAYOUT", tmp_path)]

    def broken(config, model_dir):
        raise ValueError("no layout model")
    fake.build = broken
    with pytest.raises(StageConfigError, match="no layout model"):
        build_processor("[WORKER]\nMETHOD = LAYOUT\n", tmp_path)


# --- DUMMY and FAILTEST -----------------------------------------------------------------

SETTINGS_TABLE = [
    ({}, dummy.DummySettings(1.0, 0.0, 0.0)),
    ({"TIME_SCALE": "0"}, dummy.DummySettings(0.0, 0.0, 0.0)),
    ({"TIME_SCALE": "2", "TIME_DELTA": "0.5"}, dummy.DummySettings(2.0, -0.5, 0.5)),
    ({"TIME_DIFF_MIN": "1", "TIME_DIFF_MAX": "3"}, dummy.DummySettings(1.0, 1.0, 3.0)),
    ({"TIME_DIFF_MIN": "-1", "TIME_DIFF_MAX": "3", "TIME_DELTA": "9"}, dummy.DummySettings(1.0, -1.0, 3.0)),
    ({"TIME_DIFF_MAX": "2"}, dummy.DummySettings(1.0, 0.0, 2.0)),
    ({"TIME_SCALE": "abc"}, StageConfigError),
    ({"TIME_SCALE": "nan"}, StageConfigError),
    ({"TIME_SCALE": "-1"}, StageConfigError),
    ({"TIME_DELTA": "-1"}, StageConfigError),
    ({"TIME_DIFF_MIN": "3", "TIME_DIFF_MAX": "1"}, StageConfigError),
    ({"TIME_DIFF_MIN": "1"}, StageConfigError),        # min 1 > default max 0
]


@pytest.mark.parametrize("section,expected", SETTINGS_TABLE)
def test_dummy_settings_table(section, expected):
    if expected is StageConfigError:
        with pytest.raises(StageConfigError):
            dummy.dummy_settings(section)
    else:
        assert dummy.dummy_settings(section) == expected


@pytest.mark.parametrize("size,settings,draw,seconds", [
    (1000, dummy.DummySettings(0.001, 0, 0), None, 1.0),
    (1000, dummy.DummySettings(0.001, -0.5, 0.5), "low", 0.5),
    (1000, dummy.DummySettings(0.001, -0.5, 0.5), "high", 1.5),
    (10, dummy.DummySettings(0.001, -5, -1), "low", 0.0),          # never negative
    (0, dummy.DummySettings(1, 2, 2), None, 2.0),
])
def test_dummy_duration_table(size, settings, draw, seconds):
    def uniform(low, high):
        assert draw is not None, "no random draw expected for a fixed offset"
        return low if draw == "low" else high
    assert dummy.dummy_duration(size, settings, uniform) == pytest.approx(seconds)


def test_dummy_sleeps_by_image_size():
    processor = build_processor("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0.0001\n", None)
    png = ocr_model_factory.render_page(("x",), width=100, line_spacing=30)
    request = _request(("notes.txt", b"x" * 100_000), ("scan", png))   # the image, found by content
    before = request.SerializeToString()
    started = time.monotonic()
    processor.process(request)
    elapsed = time.monotonic() - started
    assert len(png) * 0.0001 <= elapsed < len(png) * 0.0001 + 0.5
    assert request.SerializeToString() == before                       # nothing changed


def test_dummy_time_scale_zero_is_cheap():
    processor = build_processor("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n", None)
    request = _request(("page.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 5_000_000))
    started = time.perf_counter()
    for _ in range(20_000):
        processor.process(request)
    assert time.perf_counter() - started < 0.5


def test_dummy_with_empty_request_fails():
    processor = build_processor("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0.001\n", None)
    with pytest.raises(ProcessingError, match="no results"):
        processor.process(_request())


def test_failtest_always_fails():
    processor = build_processor("[WORKER]\nFAILTEST = TRUE\n", None)
    for _ in range(3):
        with pytest.raises(ProcessingError, match="FAILTEST"):
            processor.process(_request(("a.png", b"\x89PNG\r\n\x1a\n")))
    processor.close()


def test_test_processors_stay_light():
    """An idle worker (and one running DUMMY/FAILTEST) must not load numpy, OpenCV, torch or pero-ocr."""
    code = (
        "import sys\n"
        "from pero_worker.worker.processors import build_processor\n"
        "from pero_worker.libs.message_pb2 import ProcessingRequest\n"
        "r = ProcessingRequest(); r.results.add(name='a', content=b'\\x89PNG\\r\\n\\x1a\\n1234')\n"
        "build_processor('[WORKER]\\nDUMMY = TRUE\\nTIME_SCALE = 0.00001\\n', None).process(r)\n"
        "heavy = [m for m in ('numpy', 'cv2', 'torch', 'pero_ocr', 'PIL') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# --- images -----------------------------------------------------------------------------

def _encoded(fmt: str, channels: int = 3) -> bytes:
    page = np.full((40, 60, channels), 200, dtype=np.uint8) if channels > 1 else np.full((40, 60), 200, np.uint8)
    if fmt in (".gif",):
        from PIL import Image
        buffer = io.BytesIO()
        Image.fromarray(page if channels == 1 else page[:, :, ::-1]).save(buffer, format="GIF")
        return buffer.getvalue()
    ok, data = cv2.imencode(fmt, page)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("fmt,kind", [
    (".png", "png"), (".jpg", "jpeg"), (".tif", "tiff"), (".bmp", "bmp"), (".jp2", "jp2"), (".webp", "webp"),
    (".gif", "gif"),
])
def test_image_formats_recognised_and_decoded(fmt, kind):
    data = _encoded(fmt)
    assert images.image_format(data) == kind
    image = images.decode_image(data, "x" + fmt)
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8


def test_grayscale_image_becomes_three_channels():
    image = images.decode_image(_encoded(".png", channels=1), "gray.png")
    assert image.shape == (40, 60, 3)


@pytest.mark.parametrize("data", [b"", b"hello world", b"BMthis is text, not a bitmap", b"<?xml version='1.0'?>",
                                  b"\x00\x00\x00\x0c", b"RIFF1234WAVE"])
def test_non_images_are_not_recognised(data):
    assert images.image_format(data) is None


def test_find_image_by_content_not_name():
    png = _encoded(".png")
    results = _request(("page.jpg", b"not really a jpeg"), ("data.bin", png), ("page_page.xml", b"<x/>")).results
    index, data = images.find_image(results)
    assert index == 1 and data.name == "data.bin"
    with pytest.raises(ProcessingError, match="is an image") as info:
        images.find_image(_request(("page.jpg", b"text")).results)
    assert "page.jpg" in str(info.value)
    with pytest.raises(ProcessingError, match="no results"):
        images.find_image(_request().results)


def test_undecodable_image():
    broken = b"\x89PNG\r\n\x1a\n" + b"garbage" * 100
    with pytest.raises(ProcessingError, match="is not an image"):
        images.decode_image(broken, "broken.png")


# --- pero-ocr stage: pure parts ---------------------------------------------------------

@pytest.mark.parametrize("requested,available,count,expected", [
    ("auto", True, 1, "cuda"), ("auto", False, 0, "cpu"), ("", False, 0, "cpu"), ("cpu", True, 2, "cpu"),
    ("CUDA", True, 1, "cuda"), ("cuda:1", True, 2, "cuda:1"), ("cuda:2", True, 2, StageConfigError),
    ("cuda", False, 0, StageConfigError), ("cuda:x", True, 1, StageConfigError), ("tpu", True, 1, StageConfigError),
])
def test_resolve_device_table(requested, available, count, expected):
    if expected is StageConfigError:
        with pytest.raises(StageConfigError):
            pero_ocr_stage.resolve_device(requested, available, count)
    else:
        assert pero_ocr_stage.resolve_device(requested, available, count) == expected


@pytest.mark.parametrize("text,has_model,problem", [
    ("[OCR]\nOCR_JSON = ocr_engine.json\n", True, None),
    ("[OCR]\nOCR_JSON = sub/../ocr_engine.json\n", True, None),
    ("[LAYOUT_PARSER_1]\nMODEL_PATH = ./layout\n", True, None),
    ("[OCR]\nOCR_JSON = /etc/ocr_engine.json\n", True, "not a path relative"),
    ("[OCR]\nOCR_JSON = ../../other/ocr_engine.json\n", True, "leaves the model folder"),
    ("[OCR]\nOCR_JSON = a/../../x.json\n", True, "leaves the model folder"),
    ("[DECODER]\nLM = C:/lm.pt\n", True, "not a path relative"),
    ("[DECODER]\nLM = lm.pt\n", False, "needs a model archive"),
    ("[OCR]\nOCR_JSON = ocr_engine.json\n", False, "needs a model archive"),
    ("[PAGE_PARSER]\nRUN_OCR = yes\n", False, None),
])
def test_check_model_paths_table(text, has_model, problem):
    problems = pero_ocr_stage.check_model_paths(parse_stage_config(text), has_model)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize("names,suffix,preferred,exclude,expected", [
    (["img.png", "a.xml", "img.png_page.xml"], ".xml", "img.png_page.xml", 0, 2),
    (["img.png", "a.xml", "b.XML"], ".xml", "img.png_page.xml", 0, 1),
    (["img.png", "x.logits"], ".xml", "img.png_page.xml", 0, None),
    (["scan.xml", "other.txt"], ".xml", "scan.xml_page.xml", 0, None),   # the image itself is never picked
    (["img.png", "img.png.logits"], ".logits", "img.png.logits", 0, 1),
])
def test_pick_result_table(names, suffix, preferred, exclude, expected):
    results = _request(*[(name, b"") for name in names]).results
    assert pero_ocr_stage.pick_result(results, suffix, preferred, exclude) == expected


@pytest.mark.parametrize("name,stem", [
    ("page.jpg", "page"), ("scan", "scan"), ("a/b/c.tar.png", "c.tar"), ("..\\evil.png", "evil"), ("", "page"),
    (".png", ".png"),
])
def test_image_stem_table(name, stem):
    assert pero_ocr_stage.image_stem(name) == stem


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/pero_worker_pwned_by_logits"),))


def test_malicious_logits_are_refused_not_executed():
    marker = Path("/tmp/pero_worker_pwned_by_logits")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps({"r1-l001": _Boom()})
    with pytest.raises(ProcessingError, match="forbidden"):
        pero_ocr_stage.load_logits_dict(payload)
    assert not marker.exists()
    with pytest.raises(ProcessingError):
        pero_ocr_stage.load_logits_dict(b"not a pickle")
    with pytest.raises(ProcessingError, match="not a dict"):
        pero_ocr_stage.load_logits_dict(pickle.dumps([1, 2]))


# --- pero-ocr stage: a real PageParser with a tiny random model -------------------------

@pytest.fixture(scope="module")
def ocr_model(tmp_path_factory) -> Path:
    return ocr_model_factory.build_ocr_model(tmp_path_factory.mktemp("ocr_model"))


@pytest.fixture(scope="module")
def ocr_processor(ocr_model):
    processor = build_processor(ocr_model_factory.stage_config_text(decoder=True), ocr_model, device="cpu")
    yield processor
    processor.close()


def _text_lines(xml: bytes) -> list[etree._Element]:
    root = etree.fromstring(xml)
    return root.findall(f".//{PAGE_NS}TextLine")


def test_pero_ocr_processes_a_page(ocr_processor):
    png = ocr_model_factory.render_page()
    request = _request(("page1.png", png))
    ocr_processor.process(request)
    names = [data.name for data in request.results]
    assert names == ["page1.png", "page1.png_page.xml", "page1.png.logits"]
    assert request.results[0].content == png                       # the image is untouched
    xml = request.results[1].content
    lines = _text_lines(xml)
    assert len(lines) == 3                                          # three rendered text lines found
    page = etree.fromstring(xml).find(f"{PAGE_NS}Page")
    assert page.get("imageFilename") == "page1"
    assert (page.get("imageWidth"), page.get("imageHeight")) == ("900", "280")
    for line in lines:
        assert line.find(f"{PAGE_NS}Baseline") is not None
        assert line.find(f"{PAGE_NS}TextEquiv/{PAGE_NS}Unicode") is not None   # garbage text, but text
    logits = pero_ocr_stage.load_logits_dict(request.results[2].content)
    line_ids = {line.get("id") for line in lines}
    assert line_ids <= set(logits)
    some = logits[sorted(line_ids)[0]]
    assert some.shape[1] == len(ocr_model_factory.CHARACTERS) + 1


def test_pero_ocr_rewrites_existing_outputs_in_place(ocr_processor):
    jpeg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(ocr_model_factory.render_page(), np.uint8), 1))[1]
    request = _request(("scan", jpeg.tobytes()))          # no extension: found by content
    ocr_processor.process(request)
    first_xml = request.results[1].content
    assert [d.name for d in request.results] == ["scan", "scan_page.xml", "scan.logits"]
    ocr_processor.process(request)                         # a second stage on the same request
    assert [d.name for d in request.results] == ["scan", "scan_page.xml", "scan.logits"]
    assert len(_text_lines(request.results[1].content)) == len(_text_lines(first_xml))


def test_existing_page_xml_under_another_name_is_written_back(ocr_model, ocr_processor, caplog):
    png = ocr_model_factory.render_page()
    request = _request(("page.png", png))
    ocr_processor.process(request)
    xml, logits = request.results[1].content, request.results[2].content
    # A decoder-only stage reads layout + logits produced earlier (under other names) and writes them back.
    decoder_config = ("[PAGE_PARSER]\nRUN_DECODER = yes\n\n[OCR]\nOCR_JSON = ocr_engine.json\n\n"
                      "[DECODER]\nTYPE = GREEDY\nUSE_CPU = yes\n")
    decoder = build_processor(decoder_config, ocr_model, device="cpu")
    staged = _request(("page.png", png), ("layout.xml", xml), ("old.logits", logits))
    caplog.set_level(logging.DEBUG, logger=pero_ocr_stage.__name__)
    decoder.process(staged)
    assert "loaded logits of 3 lines from 'old.logits'" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]   # the decoder found every line's logits
    assert [d.name for d in staged.results] == ["page.png", "layout.xml", "old.logits"]
    assert len(_text_lines(staged.results[1].content)) == 3
    decoder.close()


@pytest.mark.parametrize("results,match", [
    ((("page.png", _encoded(".png")[:33] + b"junk" * 50),), "is not an image"),   # PNG header, damaged data
    ((("notes.txt", b"hello"),), "is an image"),
    ((("page.png", None), ("page.png_page.xml", b"<not-page/>")), "not a usable PAGE XML"),
    ((("page.png", None), ("page.png_page.xml", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM "
                                                 b"'file:///etc/passwd'>]><x>&e;</x>")), "entities"),
    ((("page.png", None), ("page.png.logits", b"garbage")), "logits"),
])
def test_pero_ocr_bad_input_is_a_processing_error(ocr_processor, results, match):
    png = ocr_model_factory.render_page(("abc",))
    request = _request(*[(name, png if content is None else content) for name, content in results])
    before = [(d.name, d.content) for d in request.results]
    with pytest.raises(ProcessingError, match=match):
        ocr_processor.process(request)
    assert [(d.name, d.content) for d in request.results] == before      # nothing half-written


def test_blank_page_gives_empty_layout(ocr_processor):
    blank = cv2.imencode(".png", np.full((300, 400, 3), 255, np.uint8))[1].tobytes()
    request = _request(("blank.png", blank))
    ocr_processor.process(request)
    assert [d.name for d in request.results] == ["blank.png", "blank.png_page.xml"]   # no lines: no logits
    assert _text_lines(request.results[1].content) == []


@pytest.mark.parametrize("config_text,model,match", [
    ("[OCR]\nOCR_JSON = ocr_engine.json\n", True, "PAGE_PARSER"),
    (ocr_model_factory.stage_config_text(ocr_json="missing.json"), True, "missing.json"),
    (ocr_model_factory.stage_config_text(ocr_json="/etc/ocr_engine.json"), True, "relative"),
    (ocr_model_factory.stage_config_text(), False, "needs a model archive"),
    ("[PAGE_PARSER]\nRUN_LINE_CROPPER = yes\n", True, "LINE_CROPPER"),
    ("[PAGE_PARSER]\nRUN_LAYOUT_PARSER = yes\n[LAYOUT_PARSER_1]\nMETHOD = NOPE\n", True, "NOPE"),
])
def test_pero_ocr_build_errors(ocr_model, config_text, model, match):
    with pytest.raises(StageConfigError, match=match):
        build_processor(config_text, ocr_model if model else None, device="cpu")


@pytest.mark.parametrize("engine,problem", [
    ({"checkpoint": "model.pt"}, None),
    ({"checkpoint": "sub/../model.pt"}, None),
    ({"net_name": "x"}, None),
    ({"checkpoint": "../outside/model.pt"}, "leaves the model folder"),
    ({"checkpoint": "../../../etc/passwd"}, "leaves the model folder"),
    ({"checkpoint": "/etc/passwd"}, "not a path relative"),
    ({"checkpoint": "C:/weights.pt"}, "not a path relative"),
    ({"checkpoint": 7}, "not a file name"),
    (["not", "an", "object"], "not a JSON object"),
])
def test_check_engine_json_table(engine, problem):
    problems = pero_ocr_stage.check_engine_json(engine, "ocr_engine.json")
    assert problems == [] if problem is None else (len(problems) == 1 and problem in problems[0])
    # A JSON in a subfolder may point one level up, but not out of the model folder.
    assert pero_ocr_stage.check_engine_json({"checkpoint": "../model.pt"}, "ocr/engine.json") == []


def _model_copy(ocr_model, tmp_path):
    import shutil
    model = tmp_path / "pack" / "model"
    shutil.copytree(ocr_model, model)
    outside = tmp_path / "pack" / "outside"
    outside.mkdir()
    for name in ("model.pt", "model.pt.cpu"):
        shutil.copy(model / name, outside / name)
    return model


def test_a_checkpoint_outside_the_model_folder_is_refused(ocr_model, tmp_path):
    """The weights pero-ocr would load from the JSON's 'checkpoint' must be inside the model folder too."""
    model = _model_copy(ocr_model, tmp_path)
    engine = json.loads((model / "ocr_engine.json").read_text())
    engine["checkpoint"] = "../outside/model.pt"          # loads fine with plain pero-ocr: that is the hole
    (model / "ocr_engine.json").write_text(json.dumps(engine))
    with pytest.raises(StageConfigError, match="checkpoint = '../outside/model.pt' leaves the model folder"):
        build_processor(ocr_model_factory.stage_config_text(decoder=False), model, device="cpu")


def test_a_symlink_out_of_the_model_folder_is_refused(ocr_model, tmp_path):
    model = _model_copy(ocr_model, tmp_path)
    (model / "model.pt.cpu").unlink()
    (model / "model.pt.cpu").symlink_to(tmp_path / "pack" / "outside" / "model.pt.cpu")
    with pytest.raises(StageConfigError, match="model.pt.cpu .*resolves outside the model folder"):
        build_processor(ocr_model_factory.stage_config_text(decoder=False), model, device="cpu")


def test_bad_device_is_a_stage_config_error(ocr_model):
    with pytest.raises(StageConfigError, match="device"):
        build_processor(ocr_model_factory.stage_config_text(), ocr_model, device="tpu:0")


def test_model_archive_roundtrip(tmp_path, ocr_model):
    """The factory's archive unpacks (safely) into a folder the stage can use."""
    from pero_worker.libs.archive import safe_extract
    archive = ocr_model_factory.pack_model(ocr_model, tmp_path / "model.tar.xz")
    safe_extract(archive, tmp_path / "unpacked")
    engine = json.loads((tmp_path / "unpacked" / "ocr_engine.json").read_text())
    assert engine["line_px_height"] == 40 and (tmp_path / "unpacked" / "model.pt.cpu").is_file()
    processor = build_processor(ocr_model_factory.stage_config_text(decoder=False), tmp_path / "unpacked",
                                device="cpu")
    request = _request(("p.png", ocr_model_factory.render_page(("one line",))))
    processor.process(request)
    assert len(_text_lines(request.results[1].content)) == 1
    processor.close()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_pero_ocr_on_cuda(ocr_model):
    """On a GPU machine the stage loads model.pt (not model.pt.cpu) onto CUDA and processes a page."""
    processor = build_processor(ocr_model_factory.stage_config_text(decoder=True), ocr_model, device="auto")
    assert processor.device.type == "cuda"
    request = _request(("p.png", ocr_model_factory.render_page()))
    processor.process(request)
    assert len(_text_lines(request.results[1].content)) == 3
    processor.close()


@pytest.mark.parametrize("text, keys, expected", [
    ("[PAGE_PARSER]\nRUN_OCR = yes\n", {"BATCH_PAGES": "4"}, {"BATCH_PAGES": "4"}),
    ("[PAGE_PARSER]\nRUN_OCR = yes\n[WORKER]\nBATCH_PAGES = 4\nCPU_PRECISION = auto\n", {"BATCH_PAGES": "1"},
     {"BATCH_PAGES": "1", "CPU_PRECISION": "auto"}),
    ("[WORKER]\nMETHOD = PERO_OCR\n", {}, {"METHOD": "PERO_OCR"}),
])
def test_with_worker_keys_sets_keys_in_one_worker_section(text, keys, expected):
    config = parse_stage_config(with_worker_keys(text, keys))
    assert {key.upper(): value for key, value in config.items("WORKER")} == expected
    assert set(config.sections()) == set(parse_stage_config(text).sections()) | {"WORKER"}   # others kept
