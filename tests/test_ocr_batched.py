"""The PERO_OCR processor's cross-page batched path against PageParser, with the bundled model on examples/.

- read alone with pero-ocr's batch rule, a page gives byte-identical PAGE XML and identical logits;
- read together with other pages (shared batches, bounded padding), every line's transcription is the same
  but for at most one borderline character on 2 % of the lines
  and its logits differ only by the padding's effect on the recurrent layers (small);
- crops made in the spawned crop pool equal crops made inline;
- a bad page fails only itself, before (bad PAGE XML) or inside the shared network pass;
- on a CPU the pages of a group are read in parallel (PAGE_THREADS): each page's results are exactly those
  of the page read alone and go back to its own request, a page that fails does so alone, and torch's
  thread setting is restored afterwards.

CPU, the real model; ~20-60 s on a loaded 2-core machine.
"""
from __future__ import annotations

import logging
import pickle
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from needs import require_module  # tests/ helper: a skip here, a failure with CI=true

require_module("torch")
require_module("pero_ocr")

import Levenshtein  # noqa: E402  (installed with pero-ocr)

from pero_worker.libs.message_pb2 import Data, ProcessingRequest  # noqa: E402
from pero_worker.worker.processors import (  # noqa: E402
    ProcessingError,
    StageConfigError,
    build_processor,
    with_worker_keys,
)
from pero_worker.worker.processors.ocr_batched import BatchSettings, batch_settings  # noqa: E402
from pero_worker.worker.processors.pero_ocr_stage import PeroOcrProcessor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "pero-ocr" / "model"
PAGES = ("03_title_rule_picture_200dpi.jpg", "05_binary_300dpi.png")


@pytest.fixture(scope="module")
def inputs() -> dict[str, tuple[bytes, bytes]]:
    """image bytes and the layout stage's PAGE XML of two example pages."""
    layout = build_processor("[WORKER]\nMETHOD = LAYOUT\n", None)
    found = {}
    for name in PAGES:
        content = (ROOT / "examples" / name).read_bytes()
        request = ProcessingRequest(uuid="x", results=[Data(name=name, content=content)])
        layout.process(request)
        found[name] = (content, next(d.content for d in request.results if d.name.endswith("_page.xml")))
    layout.close()
    return found


def _request(inputs, name: str) -> ProcessingRequest:
    content, xml = inputs[name]
    return ProcessingRequest(uuid=uuid.uuid4().hex, results=[Data(name=name, content=content),
                                                             Data(name=f"{name}_page.xml", content=xml)])


def _processor(extra: str = "") -> PeroOcrProcessor:
    """The bundled model's stage with these [WORKER] lines ("KEY = value" lines; none: one page per step)."""
    keys = dict(line.split(" = ", 1) for line in extra.splitlines() if line.strip()) or {"BATCH_PAGES": "1"}
    return build_processor(with_worker_keys((MODEL_DIR / "config.ini").read_text(), keys), MODEL_DIR, device="cpu")


def _outputs(request: ProcessingRequest) -> tuple[bytes, dict]:
    """The PAGE XML (its creation timestamps blanked) and the logits of a processed request."""
    by_name = {data.name: data.content for data in request.results}
    xml = next(content for name, content in by_name.items() if name.endswith("_page.xml"))
    xml = re.sub(rb"<(Created|LastChange)>[^<]*<", rb"<\1><", xml)
    logits = pickle.loads(next(content for name, content in by_name.items() if name.endswith(".logits")))
    return xml, logits


def _batched(processor: PeroOcrProcessor, requests: list[ProcessingRequest]) -> list[BaseException | None]:
    jobs = [processor.begin(request) for request in requests]
    processor.run(jobs)
    errors: list[BaseException | None] = []
    for job in jobs:
        try:
            processor.finish(job)
            errors.append(None)
        except ProcessingError as error:
            errors.append(error)
    return errors


def _transcriptions(xml: bytes) -> list[str]:
    from lxml import etree
    tree = etree.fromstring(xml)
    return [node.text or "" for node in tree.iter("{*}Unicode")]


def _assert_same_as_alone(request: ProcessingRequest, reference: tuple[bytes, dict]) -> None:
    xml, logits = _outputs(request)
    ref_xml, ref_logits = reference
    assert xml == ref_xml
    assert set(logits) == set(ref_logits)
    for key, value in ref_logits.items():
        if key in ("line_characters", "logit_coords"):
            assert logits[key] == value
        else:
            assert np.array_equal(logits[key].toarray(), value.toarray()), key


def _read_alone(inputs, torch_threads: int | None = None) -> dict[str, tuple[bytes, dict]]:
    """PageParser's results (the processor's one-page path) per page, with this many torch threads."""
    import torch
    threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        processor = _processor()
        assert processor.batch_pages == 1
        found = {}
        for name in PAGES:
            request = _request(inputs, name)
            processor.process(request)
            found[name] = _outputs(request)
        processor.close()
    finally:
        torch.set_num_threads(threads)
    return found


@pytest.fixture(scope="module")
def reference(inputs) -> dict[str, tuple[bytes, dict]]:
    """Each page read alone, as a worker with one page a step reads it (all torch threads)."""
    return _read_alone(inputs)


@pytest.fixture(scope="module")
def reference_one_thread(inputs) -> dict[str, tuple[bytes, dict]]:
    """Each page read alone on one torch thread, as a page thread reads it.

    float32 kernels may sum in another order on another thread count (one unit in the last place on an
    AVX2 CPU), so the bit-for-bit comparison of parallel pages is made against one thread.
    """
    return _read_alone(inputs, torch_threads=1)


def test_one_page_with_pero_ocr_batches_is_identical(inputs, reference):
    processor = _processor("BATCH_PAGES = 2\nBATCH_PIXELS = 3840\nBATCH_PADDING = inf\nCROP_PROCESSES = 0\n"
                           "PAGE_THREADS = 1\n")
    # the warm-model pool's measure: the bundled network has ~1.46 M float32 parameters
    assert 1.4e6 * 4 < processor.memory_bytes() < 1.6e6 * 4
    try:
        for name in PAGES:
            request = _request(inputs, name)
            assert _batched(processor, [request]) == [None]
            _assert_same_as_alone(request, reference[name])
    finally:
        processor.close()


def test_pages_read_together_keep_every_transcription(inputs, reference):
    processor = _processor("BATCH_PAGES = 4\nBATCH_PIXELS = 15360\nCROP_PROCESSES = 1\nPAGE_THREADS = 1\n")
    try:
        requests = [_request(inputs, name) for name in PAGES]
        assert _batched(processor, requests) == [None, None]
        assert processor._reader.batches_run < sum(len(_transcriptions(reference[n][0])) for n in PAGES) / 4
        for name, request in zip(PAGES, requests):
            xml, logits = _outputs(request)
            ref_xml, ref_logits = reference[name]
            ours, alone = _transcriptions(xml), _transcriptions(ref_xml)
            assert len(ours) == len(alone) > 20
            # Padding feeds the recurrent layers a little more black: a borderline space may flip (the
            # fine-tuned model read "68,7" alone and "68, 7" in a shared batch), nothing more.
            changed = [(a, b) for a, b in zip(ours, alone) if a != b]
            assert len(changed) <= max(1, len(alone) // 50), changed
            assert all(Levenshtein.distance(a, b) <= 1 for a, b in changed), changed
            assert logits["logit_coords"] == ref_logits["logit_coords"]
            frames = same = 0
            worst = 0.0
            for key, value in ref_logits.items():
                if key in ("line_characters", "logit_coords"):
                    continue
                start, end = ref_logits["logit_coords"][key]   # the line itself; the rest is padding
                ours, theirs = logits[key].toarray()[start:end], value.toarray()[start:end]
                # Stored logits are sparse (improbable entries zeroed), so compare what survives that:
                # each frame's best class and its logit.
                frames += len(ours)
                same += int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
                worst = max(worst, float(np.abs(ours.max(axis=1) - theirs.max(axis=1)).max()))
            assert same >= 0.995 * frames, (same, frames)
            assert worst < 1.0, worst   # best logits are tens of units; the padding moves them by far less
    finally:
        processor.close()


def test_a_bad_page_fails_alone(inputs, reference):
    processor = _processor("BATCH_PAGES = 4\nCROP_PROCESSES = 0\nPAGE_THREADS = 1\n")
    try:
        broken = _request(inputs, PAGES[0])
        broken.results[1].content = b"<PcGts><Page"   # not XML: refused in begin()
        with pytest.raises(ProcessingError, match="not a usable PAGE XML"):
            processor.begin(broken)
        first, second = _request(inputs, PAGES[0]), _request(inputs, PAGES[1])
        jobs = [processor.begin(first), processor.begin(second)]
        jobs[0].crops[0] = np.zeros((41, 50, 3), np.uint8)   # a crop the network cannot take: its batch fails
        processor.run(jobs)
        with pytest.raises(ProcessingError, match="pero-ocr failed on image"):
            processor.finish(jobs[0])
        processor.finish(jobs[1])
        assert _transcriptions(_outputs(second)[0]) == _transcriptions(reference[PAGES[1]][0])
        assert not any(data.name.endswith(".logits") for data in first.results)
    finally:
        processor.close()


@pytest.mark.parametrize("section, expected", [
    ("", BatchSettings()),
    ("[WORKER]\n", BatchSettings()),
    ("[WORKER]\nBATCH_PAGES = 8\n", BatchSettings(pages=8)),
    ("[WORKER]\nBATCH_PAGES = 8\nBATCH_PIXELS = 61440\nBATCH_PADDING = 0.1\nCROP_PROCESSES = 3\n",
     BatchSettings(8, 61440, 0.1, 3)),
    ("[WORKER]\nBATCH_PADDING = inf\n", BatchSettings(max_padding=float("inf"))),
    ("[WORKER]\nMIXED_PRECISION = yes\n", BatchSettings(mixed_precision=True)),
    ("[WORKER]\nPAGE_THREADS = 3\n", BatchSettings(page_threads=3)),
    ("[WORKER]\nFINISH_PROCESSES = 0\n", BatchSettings(finish_processes=0)),
])
def test_batch_settings_table(section, expected):
    import configparser
    config = configparser.ConfigParser()
    config.read_string(section)
    assert batch_settings(config) == expected


@pytest.mark.parametrize("section", ["BATCH_PAGES = 0", "BATCH_PAGES = two", "BATCH_PIXELS = 8",
                                     "BATCH_PADDING = -1", "BATCH_PADDING = lots", "CROP_PROCESSES = -2",
                                     "MIXED_PRECISION = maybe", "PAGE_THREADS = 0", "PAGE_THREADS = all",
                                     "FINISH_PROCESSES = -1"])
def test_bad_batch_settings_are_stage_config_errors(section):
    import configparser
    config = configparser.ConfigParser()
    config.read_string(f"[WORKER]\n{section}\n")
    with pytest.raises(StageConfigError, match=section.split()[0]):
        batch_settings(config)


def test_pages_read_in_parallel_are_each_read_as_alone(inputs, reference_one_thread):
    import torch
    processor = _processor("BATCH_PAGES = 4\nBATCH_PIXELS = 3840\nBATCH_PADDING = inf\nPAGE_THREADS = 2\n")
    threads = torch.get_num_threads()
    try:
        names = [PAGES[0], PAGES[1], PAGES[1], PAGES[0]]
        requests = [_request(inputs, name) for name in names]
        assert _batched(processor, requests) == [None] * 4
        for name, request in zip(names, requests):   # each request got its own page's results, in order
            assert request.results[0].name == name
            _assert_same_as_alone(request, reference_one_thread[name])
        assert torch.get_num_threads() == threads
    finally:
        processor.close()


def test_a_bad_page_fails_alone_in_parallel(inputs, reference_one_thread, caplog):
    caplog.set_level(logging.INFO)
    processor = _processor("BATCH_PAGES = 4\nBATCH_PIXELS = 3840\nBATCH_PADDING = inf\nPAGE_THREADS = 2\n")
    try:
        first, second, third = (_request(inputs, name) for name in (PAGES[0], PAGES[1], PAGES[0]))
        jobs = [processor.begin(request) for request in (first, second, third)]
        next(iter(jobs[1].layout.lines_iterator())).baseline = "no baseline"   # its crop raises
        processor.run(jobs)
        processor.finish(jobs[0])
        with pytest.raises(ProcessingError, match="pero-ocr failed on image"):
            processor.finish(jobs[1])
        processor.finish(jobs[2])
        _assert_same_as_alone(first, reference_one_thread[PAGES[0]])
        _assert_same_as_alone(third, reference_one_thread[PAGES[0]])
        assert not any(data.name.endswith(".logits") for data in second.results)
        # the pages' own log lines are written by finish(), on the thread whose log goes into the StageLog
        assert sum(f"image {PAGES[0]!r}" in record.getMessage() for record in caplog.records) == 2
    finally:
        processor.close()


@pytest.mark.parametrize("device, cores, expected", [("cpu", 2, 2), ("cpu", 1, 1), ("cpu", None, 1),
                                                     ("cpu", 64, 8), ("cuda", 16, 1)])
def test_default_page_threads(device, cores, expected):
    from pero_worker.worker.processors.ocr_batched import default_page_threads
    assert default_page_threads(device, cores) == expected


@pytest.mark.parametrize("mixed", ["FALSE", "TRUE"])
def test_cuda_batched_path_keeps_the_transcriptions(inputs, reference, mixed):
    """On a GPU (pinned memory, optionally float16 autocast) the text stays PageParser-on-CPU's text."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (hardware, not a missing dependency)")
    text = with_worker_keys((MODEL_DIR / "config.ini").read_text(), {"BATCH_PAGES": "4", "MIXED_PRECISION": mixed})
    processor = build_processor(text, MODEL_DIR, device="cuda")
    try:
        requests = [_request(inputs, name) for name in PAGES]
        assert _batched(processor, requests) == [None, None]
        for name, request in zip(PAGES, requests):
            ours, theirs = _transcriptions(_outputs(request)[0]), _transcriptions(reference[name][0])
            differing = sum(a != b for a, b in zip(ours, theirs))
            assert len(ours) == len(theirs) and differing <= len(theirs) // 20, (differing, len(theirs))
    finally:
        processor.close()


# --- finishing processes (the shared-batch path's page tails, ocr_finishing.py) ---

FINISHING = "BATCH_PAGES = 4\nBATCH_PIXELS = 3840\nBATCH_PADDING = inf\nCROP_PROCESSES = 0\nPAGE_THREADS = 1\n"


@pytest.fixture(scope="module")
def finished_here(inputs) -> list[tuple[bytes, dict]]:
    """A shared-batch group [P0, P1, P1, P0] finished on the processing thread (FINISH_PROCESSES = 0)."""
    processor = _processor(FINISHING + "FINISH_PROCESSES = 0\n")
    try:
        assert processor._finish_pool is None
        requests = [_request(inputs, name) for name in (PAGES[0], PAGES[1], PAGES[1], PAGES[0])]
        assert _batched(processor, requests) == [None] * 4
        return [_outputs(request) for request in requests]
    finally:
        processor.close()


def test_pages_finished_in_processes_are_as_finished_here(inputs, finished_here):
    processor = _processor(FINISHING + "FINISH_PROCESSES = 2\n")
    try:
        assert processor._finish_pool is not None and processor._finish_pool.processes == 2
        names = (PAGES[0], PAGES[1], PAGES[1], PAGES[0])
        for _step in range(2):   # the second step on processes already started
            requests = [_request(inputs, name) for name in names]
            assert _batched(processor, requests) == [None] * 4
            for name, request, expected in zip(names, requests, finished_here):   # each its own page, in order
                assert request.results[0].name == name
                _assert_same_as_alone(request, expected)
        assert processor._finish_pool is not None   # finished there, not here after a breakdown
    finally:
        processor.close()


def _group_with_a_short_page(processor: PeroOcrProcessor, inputs) -> tuple[list, list]:
    """[P0, P1, P1] where the middle page's network returns one line result short, so its tail fails."""
    requests = [_request(inputs, name) for name in (PAGES[0], PAGES[1], PAGES[1])]
    jobs = [processor.begin(request) for request in requests]
    jobs[1].crops = jobs[1].crops[:-1]
    processor.run(jobs)
    errors = []
    for job in jobs:
        try:
            processor.finish(job)
            errors.append(None)
        except ProcessingError as error:
            errors.append(str(error))
    return requests, errors


def test_a_page_whose_tail_fails_in_a_process_fails_alone(inputs, caplog):
    here = _processor(FINISHING + "FINISH_PROCESSES = 0\n")
    try:
        expected, expected_errors = _group_with_a_short_page(here, inputs)
    finally:
        here.close()
    caplog.set_level(logging.INFO)
    processor = _processor(FINISHING + "FINISH_PROCESSES = 1\n")
    try:
        requests, errors = _group_with_a_short_page(processor, inputs)
        assert errors[0] is None and errors[2] is None
        assert errors[1].startswith("pero-ocr failed on image '05_binary_300dpi.png': ValueError: zip()")
        assert errors[1] == expected_errors[1]   # the same error as when finished here
        for index in (0, 2):
            _assert_same_as_alone(requests[index], _outputs(expected[index]))
        assert not any(data.name.endswith(".logits") for data in requests[1].results)
        # the summaries come back from the process and are logged by finish(), where the request's log is kept
        assert sum(f"image {PAGES[0]!r}" in record.getMessage() for record in caplog.records) == 1
        assert processor._finish_pool is not None   # a page's failure is not the pool's
    finally:
        processor.close()


def test_pages_are_finished_here_when_the_processes_die(inputs, finished_here, caplog):
    import os
    import signal
    import time
    caplog.set_level(logging.INFO)
    processor = _processor(FINISHING + "FINISH_PROCESSES = 1\n")
    try:
        names = (PAGES[0], PAGES[1], PAGES[1], PAGES[0])
        warm = [_request(inputs, name) for name in names]
        assert _batched(processor, warm) == [None] * 4
        for pid in list(processor._finish_pool._executor._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        requests = [_request(inputs, name) for name in names]
        assert _batched(processor, requests) == [None] * 4
        for request, expected in zip(requests, finished_here):
            _assert_same_as_alone(request, expected)
        assert processor._finish_pool is None
        assert any("finishing processes stopped" in record.getMessage() for record in caplog.records)
    finally:
        processor.close()


@pytest.mark.parametrize("device, cores, expected", [("cuda", 16, 15), ("cuda", 64, 16), ("cuda", 1, 1),
                                                     ("cuda", None, 1), ("cpu", 16, 0)])
def test_default_finish_processes(device, cores, expected):
    from pero_worker.worker.processors.ocr_finishing import default_finish_processes
    assert default_finish_processes(device, cores) == expected


def test_pages_cropped_and_finished_elsewhere_are_decoded_only_there(inputs, finished_here, caplog):
    """With both pools (a GPU's set-up) the processing thread leaves the image undecoded; a page whose PAGE XML
    is for another page size is still reported (the finishing process's warning comes back), and an image
    that cannot be decoded fails alone."""
    caplog.set_level(logging.INFO)
    processor = _processor(FINISHING.replace("CROP_PROCESSES = 0", "CROP_PROCESSES = 1") + "FINISH_PROCESSES = 1\n")
    try:
        names = (PAGES[0], PAGES[1], PAGES[1], PAGES[0])
        requests = [_request(inputs, name) for name in names]
        jobs = [processor.begin(request) for request in requests]
        assert all(job.image is None for job in jobs)
        processor.run(jobs)
        for job in jobs:
            processor.finish(job)
        for request, expected in zip(requests, finished_here):
            _assert_same_as_alone(request, expected)
        assert not any("is for a" in record.getMessage() for record in caplog.records)

        other_size = _request(inputs, PAGES[0])
        other_size.results[1].content = inputs[PAGES[1]][1]          # the other page's PAGE XML
        broken = _request(inputs, PAGES[1])
        broken.results[0].content = broken.results[0].content[:300]   # a PNG cut short: its header only
        fine = _request(inputs, PAGES[1])
        errors = _batched(processor, [other_size, broken, fine])
        assert errors[0] is None and errors[2] is None
        assert "is not an image that can be decoded" in str(errors[1])
        assert sum("is for a 1890 x 2550 page" in record.getMessage() for record in caplog.records) == 1
        assert processor._finish_pool is not None
    finally:
        processor.close()


@pytest.mark.parametrize("device, cores, expected", [("cuda", 16, 15), ("cuda", 64, 16), ("cuda", 1, 1),
                                                     ("cpu", 16, 0)])
def test_default_crop_processes(device, cores, expected):
    from pero_worker.worker.processors.ocr_batched import default_crop_processes
    assert default_crop_processes(device, cores) == expected
