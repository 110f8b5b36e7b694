"""PERO_OCR processor: runs a pero-ocr PageParser on the request's image (docs/protocol.md §5).

For one request:
1. the input image is the first result whose content is an image (images.py);
2. an existing PAGE XML result (`*.xml`, preferring `<image name>_page.xml`) is
   the starting layout, otherwise a new empty PageLayout of the image's size;
3. existing logits (`*.logits`, preferring `<image name>.logits`) are loaded
   into its lines (a decoder-only stage needs them);
4. `PageParser.process_page(image, layout)` runs;
5. the PAGE XML and logits are written back into the results they were read
   from, or added as `<image name>_page.xml` / `<image name>.logits` (an entry
   of that name is replaced, never duplicated).  Logits are written only when
   some line has them (a layout-only stage has none).

torch and pero-ocr are imported only by `build`, so merely importing this
package costs nothing.

Untrusted input: PAGE XML with entity declarations is refused (no entity
expansion tricks), and `.logits` (a pickle, as pero-ocr writes it) is read with
an unpickler that only admits the numpy/scipy classes logits consist of:
plain `pickle.loads` of request data would let any publisher run code on the worker.
Every file pero-ocr opens must be inside the model folder: the stage config's
paths (OCR_JSON, MODEL_PATH, LM) and the paths inside the engine JSON they name
(`checkpoint`), with their '.cpu' variants, links resolved.
"""
from __future__ import annotations

import configparser
import dataclasses
import gc
import io
import json
import logging
import os
import pickle
import posixpath
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pero_worker.worker.processors import ProcessingError, StageConfigError
from pero_worker.worker.processors.images import decode_image, find_image

if TYPE_CHECKING:
    from pero_worker.libs.message_pb2 import Data, ProcessingRequest
    from pero_worker.worker.processors.character_prior import PriorSettings

log = logging.getLogger(__name__)

PAGE_XML_SUFFIX = "_page.xml"
LOGITS_SUFFIX = ".logits"


# --- pure decisions -------------------------------------------------------------------

def resolve_device(requested: str, cuda_available: bool, cuda_count: int) -> str:
    """torch device name for the worker's --device option: 'auto', 'cpu', 'cuda' or 'cuda:N' (pure)."""
    text = (requested or "auto").strip().lower()
    if text == "auto":
        return "cuda" if cuda_available else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda" or text.startswith("cuda:"):
        if not cuda_available:
            raise StageConfigError(f"device {requested!r} requested but CUDA is not available on this machine")
        if text == "cuda":
            return "cuda"
        index_text = text.split(":", 1)[1]
        if not index_text.isdigit():
            raise StageConfigError(f"invalid device {requested!r} (expected cuda:N)")
        if int(index_text) >= cuda_count:
            raise StageConfigError(f"device {requested!r} does not exist: this machine has {cuda_count} CUDA device(s)")
        return f"cuda:{int(index_text)}"
    raise StageConfigError(f"invalid device {requested!r} (expected auto, cpu, cuda or cuda:N)")


def _is_path_option(name: str) -> bool:
    return name == "lm" or name.endswith(("_path", "_json"))


def check_model_paths(config: configparser.ConfigParser, has_model_dir: bool) -> list[str]:
    """Problems with file paths in the config (pure): absolute paths, paths leaving the model folder,
    or paths at all when the stage has no model archive."""
    problems = []
    for section in config.sections():
        for option, value in config.items(section, raw=True):
            if not _is_path_option(option) or not value.strip():
                continue
            path = value.strip()
            if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
                problems.append(f"[{section}] {option.upper()} = {path!r} is not a path relative to the model folder")
            elif posixpath.normpath(path).split("/")[0] == "..":
                problems.append(f"[{section}] {option.upper()} = {path!r} leaves the model folder")
            elif not has_model_dir:
                problems.append(f"[{section}] {option.upper()} = {path!r} needs a model archive, but the stage "
                                "has none (config_path is empty)")
    return problems


# Keys inside pero-ocr's engine JSON files (OCR_JSON) that pero-ocr opens as files, relative to the JSON's
# folder: BaseEngineLineOCR reads 'checkpoint' (and loads '<checkpoint>.cpu' on a CPU).
ENGINE_JSON_PATH_KEYS = ("checkpoint",)
MAX_ENGINE_JSON_BYTES = 16 * 1024 * 1024


def check_engine_json(engine: Any, json_path: str) -> list[str]:
    """Problems with the file paths inside one pero-ocr engine JSON (pure): `json_path` is the JSON's path
    relative to the model folder; every path in it must stay inside that folder."""
    if not isinstance(engine, dict):
        return [f"{json_path} is not a JSON object"]
    problems = []
    folder = posixpath.dirname(json_path)
    for key in ENGINE_JSON_PATH_KEYS:
        value = engine.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{json_path}: {key!r} is not a file name")
            continue
        if value.startswith("/") or "\\" in value or (len(value) > 1 and value[1] == ":"):
            problems.append(f"{json_path}: {key} = {value!r} is not a path relative to the model folder")
        elif posixpath.normpath(posixpath.join(folder, value)).split("/")[0] == "..":
            problems.append(f"{json_path}: {key} = {value!r} leaves the model folder")
    return problems


def _confined(model_dir: Path, path: Path) -> bool:
    """Whether `path`, with every symbolic link resolved, is inside the model folder."""
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(model_dir)))


def check_model_files(config: configparser.ConfigParser, model_dir: Path) -> list[str]:
    """Every file pero-ocr will open for this config stays inside the model folder, links resolved:
    the config's paths, the paths inside the engine JSON files they name, and their '.cpu' variants."""
    problems = []
    for section in config.sections():
        for option, value in config.items(section, raw=True):
            if not _is_path_option(option) or not value.strip():
                continue
            relative = value.strip()
            path = model_dir / relative
            opened = [path, Path(f"{path}.cpu")]
            if relative.lower().endswith(".json") and path.is_file() and _confined(model_dir, path):
                try:
                    if path.stat().st_size > MAX_ENGINE_JSON_BYTES:
                        problems.append(f"{relative} is larger than {MAX_ENGINE_JSON_BYTES} bytes")
                        continue
                    engine = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    problems.append(f"{relative} is not a readable JSON file: {error}")
                    continue
                json_problems = check_engine_json(engine, posixpath.normpath(relative))
                problems.extend(json_problems)
                if not json_problems:
                    for key in ENGINE_JSON_PATH_KEYS:
                        if isinstance(engine.get(key), str):
                            inner = path.parent / engine[key]
                            opened += [inner, Path(f"{inner}.cpu")]
            for candidate in opened:
                if not _confined(model_dir, candidate):
                    shown = os.path.relpath(candidate, model_dir)
                    problems.append(f"{shown} (from [{section}] {option.upper()}) resolves outside the model "
                                    "folder (a symbolic link?)")
    return problems


def pick_result(results: Sequence[Data], suffix: str, preferred: str, exclude: int) -> int | None:
    """Index of the result to read (and write back) for `suffix`: the one named `preferred`, else the first
    whose name ends with `suffix` (case-insensitive), never the image itself (pure)."""
    first = None
    for index, data in enumerate(results):
        if index == exclude:
            continue
        if data.name == preferred:
            return index
        if first is None and data.name.lower().endswith(suffix):
            first = index
    return first


def image_stem(name: str) -> str:
    """PAGE id for a new layout: the image's file name without folder and extension (pure)."""
    base = posixpath.basename(name.replace("\\", "/"))
    stem = posixpath.splitext(base)[0]
    return stem or base or "page"


# --- untrusted logits -----------------------------------------------------------------

_NUMPY_GLOBALS = {"dtype", "ndarray", "_reconstruct", "scalar", "_frombuffer"}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}
_SPARSE_CLASSES = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}


class _LogitsUnpickler(pickle.Unpickler):
    """Admits only what pero-ocr's pickled logits are made of (numpy arrays, scipy sparse matrices)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_CLASSES:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):   # protocol 2 pickles of bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name} in logits")


def load_logits_dict(data: bytes) -> dict:
    """The logits dictionary of a `.logits` result; ProcessingError when it is not one."""
    try:
        loaded = _LogitsUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # any unpickling failure means: not logits we can use
        raise ProcessingError(f"logits are not a pero-ocr logits file: {type(error).__name__}: {error}") from None
    if not isinstance(loaded, dict):
        raise ProcessingError(f"logits are not a pero-ocr logits file (a {type(loaded).__name__}, not a dict)")
    return loaded


def apply_logits(page_layout: Any, logits: dict) -> int:
    """Attach logits to the layout's lines by line id (as PageLayout.load_logits does); returns lines matched."""
    characters = logits.get("line_characters")
    coords = logits.get("logit_coords")
    characters = characters if isinstance(characters, dict) else {}
    coords = coords if isinstance(coords, dict) else {}
    matched = 0
    for line in page_layout.lines_iterator():
        if line.id in ("line_characters", "logit_coords") or line.id not in logits:
            continue
        line.logits = logits[line.id]
        line.characters = characters.get(line.id)
        line.logit_coords = coords.get(line.id, [None, None])
        matched += 1
    return matched


# --- the processor ----------------------------------------------------------------------

def _put_result(results: Any, index: int | None, name: str, content: bytes) -> None:
    if index is None:
        for position, data in enumerate(results):
            if data.name == name:
                index = position
                break
    if index is None:
        results.add(name=name, content=content)
    else:
        results[index].content = content


@dataclass
class PageJob:
    """One request's page on its way through the batched path (begin -> run -> finish)."""
    request: Any
    image_name: str
    image: Any
    layout: Any
    xml_index: int | None
    logits_index: int | None
    content: bytes = b""
    crops: Any = None            # list of crops, or a Future of it from the crop pool
    error: BaseException | None = None
    layout_turn: int = 0         # the quarter turn the layout stage applied to read the page (its PAGE XML facts)
    # Rendered in run() when pages are read in parallel, or a Future of it from the finishing pool; stored
    # by finish().
    output: PageOutput | Future | None = None
    lines: Any = None            # the network's line results, while a finishing process works on them


@dataclass
class PageOutput:
    """What one page's results become, made off the processing thread; stored (and logged) by finish()."""
    xml: bytes
    logits: bytes | None
    summary: str
    warning: str | None
    notes: tuple[str, ...] = ()   # warnings logged where it was made (a finishing process), to be logged again


class PeroOcrProcessor:
    def __init__(self, page_parser: Any, device: Any, batching: Any = None,
                 prior: PriorSettings | None = None) -> None:
        self.page_parser = page_parser
        self.device = device
        self.prior = prior
        self._penalties: Any = None
        # Batched path (ocr_batched.py): the processing thread hands this many requests at once to
        # begin/run/finish; 1 = one request at a time through process().
        self.batch_pages = 1
        self.model_bytes: int | None = None
        self._reader = None
        self._crop_pool = None
        # On a CPU the pages of a group are read in parallel, one page per thread and one torch thread each
        # (a CPU reads a pixel no cheaper in bigger batches, and torch's own threads scale poorly on a page's
        # small batches).  The pool's threads only ever run _read_page_alone; they are owned by this processor.
        self._page_pool: ThreadPoolExecutor | None = None
        self._page_threads = 1
        # With shared batches (a GPU) each read page's tail goes to spawned processes (ocr_finishing.py).
        self._finish_pool = None
        if batching is not None:
            self.batch_pages, self._reader, self._crop_pool = batching.pages, batching.reader, batching.crop_pool
            self._finish_pool = batching.finish_pool
            if batching.page_threads > 1:
                self._page_threads = batching.page_threads
                self._page_pool = ThreadPoolExecutor(batching.page_threads, thread_name_prefix="ocr-page")

    def memory_bytes(self) -> int:
        """Bytes of the line network's parameters and buffers (what the warm-model pool budgets; activations
        and pero-ocr's other parts are not counted).  Measured when the stage was built: a network
        optimised for the CPU keeps its weights as constants, which `parameters()` no longer lists."""
        if self.model_bytes is not None:
            return self.model_bytes
        return network_bytes(self.page_parser)

    @property
    def crops_ahead(self) -> bool:
        """True when lines are cropped in a pool: the worker then begins the next group before running this one."""
        return self._crop_pool is not None

    def _load_layout(self, xml: bytes, name: str) -> Any:
        from pero_ocr.core.layout import PageLayout
        if b"<!ENTITY" in xml:
            raise ProcessingError(f"PAGE XML {name!r} declares entities, which are not accepted")
        try:
            return PageLayout(file=io.BytesIO(xml))
        except Exception as error:
            raise ProcessingError(f"result {name!r} is not a usable PAGE XML: {type(error).__name__}: {error}") \
                from None

    def _read_input(self, request: ProcessingRequest, decode: bool = True) -> PageJob:
        """The request's image, its starting layout (with logits) and where the results go back.

        `decode=False` (begin() when other processes crop the lines and finish the page, which decode it
        themselves): the image stays undecoded where the request has a PAGE XML (job.image None), which saves
        the processing thread a tenth of a 300 dpi page's time on a GPU; its checks are made there."""
        from pero_ocr.core.layout import PageLayout

        results = request.results
        image_index, image_data = find_image(results)
        image_name = image_data.name or "page"
        xml_index = pick_result(results, ".xml", image_name + PAGE_XML_SUFFIX, image_index)
        logits_index = pick_result(results, LOGITS_SUFFIX, image_name + LOGITS_SUFFIX, image_index)
        image = None
        if decode or xml_index is None:
            image = decode_image(image_data.content, image_data.name)
        if xml_index is not None:
            page_layout = self._load_layout(results[xml_index].content, results[xml_index].name)
            if image is not None and tuple(page_layout.page_size) != image.shape[:2]:
                height, width = image.shape[:2]
                log.warning("PAGE XML %r is for a %s x %s page but the image is %d x %d", results[xml_index].name,
                            page_layout.page_size[1], page_layout.page_size[0], width, height)
        else:
            page_layout = PageLayout(id=image_stem(image_name), page_size=image.shape[:2])
        if logits_index is not None:
            matched = apply_logits(page_layout, load_logits_dict(results[logits_index].content))
            log.debug("loaded logits of %d lines from %r", matched, results[logits_index].name)
        job = PageJob(request, image_name, image, page_layout, xml_index, logits_index, image_data.content)
        if xml_index is not None:
            # pero-ocr rewrites the Page element on output: the layout stage's facts are read from the input.
            from pero_worker.worker.layout.facts import read_facts
            facts = read_facts(results[xml_index].content)
            job.layout_turn = facts.orientation if facts is not None else 0
        return job

    def _failed(self, job: PageJob, error: BaseException) -> ProcessingError:
        self._after_failure(error)
        log.error("pero-ocr failed on image %r", job.image_name, exc_info=error)
        return ProcessingError(f"pero-ocr failed on image {job.image_name!r}: {type(error).__name__}: {error}")

    def process(self, request: ProcessingRequest) -> None:
        job = self._read_input(request)
        try:
            job.layout = self.page_parser.process_page(job.image, job.layout)
        except Exception as error:
            raise self._failed(job, error) from error
        self._write_output(job)

    def _write_output(self, job: PageJob) -> None:
        self._store_output(job, self._render_output(job))

    def _render_output(self, job: PageJob) -> PageOutput:
        """The page's PAGE XML (with confidences and quality mark) and logits; no logging, so that it can run
        on a page thread (finish() logs on the processing thread, where the request's log is captured)."""
        page_layout = job.layout
        known: dict[int, Any] = {}
        penalties = self._apply_prior(page_layout, known)
        xml_out, summary, warning = self._assess(job.image, page_layout, penalties, job.layout_turn, known)
        height, width = job.image.shape[:2]
        summary = f"image {job.image_name!r} ({width} x {height}): {len(page_layout.regions)} regions, {summary}"
        return PageOutput(xml_out, self._logits_bytes(page_layout), summary, warning)

    def _store_output(self, job: PageJob, output: PageOutput) -> None:
        results, image_name = job.request.results, job.image_name
        for note in output.notes:
            log.warning("%s", note)
        if output.warning:
            log.warning("%s", output.warning)
        _put_result(results, job.xml_index, image_name + PAGE_XML_SUFFIX, output.xml)
        if output.logits is not None:
            _put_result(results, job.logits_index, image_name + LOGITS_SUFFIX, output.logits)
        log.info("%s", output.summary)

    def _apply_prior(self, page_layout: Any, confidences: dict[int, Any] | None = None) -> Any:
        """Re-read the lines with the stage's character prior (not after a decoder); the penalties used, or None.
        `confidences` receives the re-read lines' character confidences (character_prior.apply_prior)."""
        if self.prior is None or getattr(self.page_parser, "decoder", None) is not None:
            return None
        from pero_worker.worker.processors.character_prior import apply_prior, penalty_vector
        characters = next((line.characters for line in page_layout.lines_iterator() if line.characters), None)
        if characters is None:
            return None
        if self._penalties is None or len(self._penalties) != len(characters) + 1:
            self._penalties = penalty_vector(characters, self.prior)
        changed = apply_prior(page_layout, self._penalties, confidences)
        log.debug("character prior changed %d lines", changed)
        return self._penalties

    def _assess(self, image: Any, page_layout: Any, penalties: Any, layout_turn: int = 0,
                known: dict[int, Any] | None = None) -> tuple[bytes, str, str | None]:
        """PAGE XML with line confidences and the page's quality mark, a summary, and the QUALITY WARNING
        line when the page is flagged (None otherwise).

        Only a stage that reads text (OCR or decoder) is judged: a layout-only config finds no text by design.
        """
        xml = page_layout.to_pagexml_string().encode("utf-8")
        parser = self.page_parser
        if getattr(parser, "ocr", None) is None and getattr(parser, "decoder", None) is None:
            return xml, f"{sum(1 for _ in page_layout.lines_iterator())} lines", None
        from pero_worker.libs.quality import quality_flags, warning_line
        from pero_worker.worker.processors.quality_probe import mark_page_xml, measure_page

        numbers = dataclasses.replace(measure_page(image, page_layout, parser, penalties, known=known),
                                      layout_turn=layout_turn)
        flags = quality_flags(numbers)
        xml = mark_page_xml(page_layout.to_pagexml_string().encode("utf-8"), numbers, flags)
        confidence = "-" if numbers.mean_confidence is None else f"{numbers.mean_confidence:.3f}"
        return (xml, f"{numbers.lines} lines, {numbers.characters} characters, mean confidence {confidence}",
                warning_line(flags) if flags else None)

    # --- batched path: several requests per step, in shared batches or (CPU) side by side (ocr_batched.py) ---

    def begin(self, request: ProcessingRequest) -> PageJob:
        """Read one request's input and start cropping its lines (ahead, when there is a crop pool);
        ProcessingError for bad input, as process() raises it."""
        parser = self.page_parser
        elsewhere = self._crop_pool is not None and self._finish_pool is not None and not parser.run_layout_parser
        job = self._read_input(request, decode=not elsewhere)
        try:
            self._run_layout_parsers(job)
            geometry = _line_geometry(job.layout)
            if self._crop_pool is not None and geometry:
                job.crops = self._crop_pool.submit(parser.line_cropper.crop_engine, job.content, job.image_name,
                                                   geometry)
            elif self._page_pool is not None:
                job.crops = None             # cropped on its page thread in run()
            else:
                job.crops = self._crop_here(job)
        except Exception as error:
            raise self._failed(job, error) from error
        return job

    def _run_layout_parsers(self, job: PageJob) -> None:
        parser = self.page_parser
        for layout_parser in parser.layout_parsers if parser.run_layout_parser else []:
            job.layout = layout_parser.process_page(job.image, job.layout)

    def run(self, jobs: Sequence[PageJob]) -> None:
        """Read the lines of all pages (in shared batches, or page by page in parallel on a CPU); a page's
        failure is kept in its job."""
        if self._page_pool is not None:
            self._run_in_parallel(jobs)
            return
        live = []
        for job in jobs:
            if hasattr(job.crops, "result"):
                try:
                    job.crops = job.crops.result()
                except Exception as error:   # this page's crop failed in the pool: only this page fails
                    job.error = error
                    continue
            live.append(job)
        before = self._reader.batches_run
        read = self._reader.read_pages([job.crops for job in live])
        log.info("read %d pages (%d lines) together in %d network batches", len(live),
                 sum(len(job.crops) for job in live), self._reader.batches_run - before)
        for job, lines in zip(live, read):
            if isinstance(lines, BaseException):
                job.error = lines
                continue
            if self._finish_pool is not None:
                try:
                    job.output = self._finish_pool.submit(job.request.SerializeToString(), lines)
                    job.lines = lines
                    continue
                except BrokenExecutor as error:
                    self._drop_finish_pool(error)
            try:
                if job.image is None:   # left undecoded for the finishing processes, which have stopped
                    job.output = self.finish_read_page(job.request, lines)
                else:
                    self._after_ocr(job, lines)
            except Exception as error:
                job.error = error

    def _run_in_parallel(self, jobs: Sequence[PageJob]) -> None:
        """Each page on a page thread: crop, network, confidences, output rendered.  torch runs one thread
        per page meanwhile (the setting is process-wide: restored afterwards for the worker's other stages)."""
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            list(self._page_pool.map(self._read_page_alone, jobs))
        finally:
            torch.set_num_threads(threads)
        log.info("read %d pages (%d lines), %d at a time", len(jobs),
                 sum(len(job.crops or ()) for job in jobs), self._page_threads)

    def _read_page_alone(self, job: PageJob) -> None:
        """One page of a parallel group, start to finish except storing; its failure is kept in the job."""
        try:
            if hasattr(job.crops, "result"):
                job.crops = job.crops.result()
            elif job.crops is None:
                job.crops = self._crop_here(job)
            lines = self._reader.read_pages([job.crops])[0]
            if isinstance(lines, BaseException):
                raise lines
            self._after_ocr(job, lines)
            job.output = self._render_output(job)
        except Exception as error:
            job.error = error

    def _crop_here(self, job: PageJob) -> list[Any]:
        """The page's line crops, made on the calling thread."""
        from pero_worker.worker.processors.ocr_batched import crop_lines
        return crop_lines(self.page_parser.line_cropper.crop_engine, job.image, _line_geometry(job.layout))

    def _after_ocr(self, job: PageJob, lines: Sequence[Any]) -> None:
        """What PageParser.process_page does after its OCR step, for one page."""
        parser = self.page_parser
        characters = parser.ocr.ocr_engine.characters
        for line, result in zip(job.layout.lines_iterator(), lines, strict=True):
            line.transcription = result.transcription
            line.logits = result.logits
            line.characters = characters
            line.logit_coords = result.logit_coords
        if parser.run_decoder:
            job.layout = parser.decoder.process_page(job.layout)
        # pero-ocr's line confidences (PageParser.update_confidences) are all replaced by the quality probe's
        # when the page is rendered (_assess), but for lines with no characters, which it gives pero-ocr's
        # then: computed here only when lines are filtered by them (a fifth of a page's tail otherwise).
        if parser.filter_confident_lines_threshold > 0:
            parser.update_confidences(job.layout)
            job.layout = parser.filter_confident_lines(job.layout)

    def finish(self, job: PageJob) -> None:
        """Write one page's results into its request; ProcessingError when that page failed."""
        if job.error is not None:
            raise self._failed(job, job.error) from job.error
        if isinstance(job.output, Future):
            job.output = self._finished_elsewhere(job)
        if job.output is not None:
            self._store_output(job, job.output)
        else:
            self._write_output(job)

    def _finished_elsewhere(self, job: PageJob) -> PageOutput:
        """The finishing process's output for the page, or, when the pool broke, the same made here from the
        request and the line results kept in the job."""
        try:
            return job.output.result()
        except BrokenExecutor as error:
            self._drop_finish_pool(error)
        except Exception as error:
            raise self._failed(job, error) from error
        try:
            return self.finish_read_page(job.request, job.lines)   # what the process would have done
        except Exception as error:
            raise self._failed(job, error) from error

    def _drop_finish_pool(self, error: BaseException) -> None:
        if self._finish_pool is not None:
            log.warning("the finishing processes stopped (%s: %s); pages are finished on the processing thread "
                        "from now on", type(error).__name__, error)
            self._finish_pool.close()
            self._finish_pool = None

    def finish_read_page(self, request: ProcessingRequest, lines: Sequence[Any]) -> PageOutput:
        """What follows the network for a page whose lines another process read (a finishing process's work,
        ocr_finishing.py): the request's input read as begin() reads it, then the page's tail."""
        job = self._read_input(request)
        self._run_layout_parsers(job)
        self._after_ocr(job, lines)
        return self._render_output(job)

    @staticmethod
    def _logits_bytes(page_layout: Any) -> bytes | None:
        if not any(line.logits is not None for line in page_layout.lines_iterator()):
            return None
        try:
            return page_layout.save_logits_bytes(missing_line_logits_ok=True)
        except Exception as error:  # e.g. lines without characters/coords from an old logits file
            log.warning("logits not saved: %s: %s", type(error).__name__, error)
            return None

    def _after_failure(self, error: BaseException) -> None:
        """Free GPU memory after an out-of-memory failure so that the next (smaller) page can run."""
        if getattr(self.device, "type", "cpu") == "cuda":
            import torch
            if isinstance(error, torch.cuda.OutOfMemoryError):
                gc.collect()
                torch.cuda.empty_cache()

    def close(self) -> None:
        if self._page_pool is not None:
            self._page_pool.shutdown(wait=True)
            self._page_pool = None
        if self._crop_pool is not None:
            self._crop_pool.close()
            self._crop_pool = None
        if self._finish_pool is not None:
            self._finish_pool.close()
            self._finish_pool = None
        parser, self.page_parser = self.page_parser, None
        if parser is None:
            return
        # LAYOUT_CNN parsers keep a multiprocessing pool; end it instead of leaking a process per stage switch.
        for layout_parser in getattr(parser, "layout_parsers", None) or []:
            pool = getattr(layout_parser, "pool", None)
            if pool is not None:
                pool.terminate()
        del parser
        gc.collect()
        if getattr(self.device, "type", "cpu") == "cuda":
            import torch
            torch.cuda.empty_cache()


def _line_geometry(page_layout: Any) -> list[tuple[Any, Any]]:
    """(baseline, heights) of every line, what a crop needs (and what the crop pool is sent)."""
    return [(line.baseline, line.heights) for line in page_layout.lines_iterator()]


def network_bytes(page_parser: Any) -> int:
    """Bytes of the parameters and buffers of the parser's line-OCR network (0 without one)."""
    engine = getattr(getattr(page_parser, "ocr", None), "ocr_engine", None)
    model = getattr(engine, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return 0
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# The check input of optimize_for_cpu: one line crop as pero-ocr feeds it (N x 3 x 40 x W, values in [0, 1]).
CHECK_INPUT_SHAPE = (2, 3, 40, 256)
CHECK_TOLERANCE = 1e-3
# A bfloat16 network keeps ~3 significant digits: on the check input the bundled model's logits (range about
# -16..12) move by up to ~1; a broken conversion moves them far more.  What it does to the text is measured
# (bench/line_ocr.py --network bfloat16, README "OCR throughput").
BFLOAT16_CHECK_TOLERANCE = 2.0
CPU_PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_precision(config: configparser.ConfigParser) -> str:
    """The stage's [WORKER] CPU_PRECISION: auto (default), float32 or bfloat16; StageConfigError otherwise (pure)."""
    from pero_worker.worker.processors import WORKER_SECTION
    raw = config.get(WORKER_SECTION, "CPU_PRECISION", raw=True, fallback="").strip().lower() or "auto"
    if raw not in CPU_PRECISIONS:
        raise StageConfigError(f"[{WORKER_SECTION}] CPU_PRECISION must be one of {', '.join(CPU_PRECISIONS)}, "
                               f"not {raw!r}")
    return raw


def native_bfloat16(cpu_flags: set[str]) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo's flags (pure).
    Without it oneDNN emulates bfloat16, which is slower than float32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def use_bfloat16(precision: str, flags: set[str]) -> bool:
    """auto = bfloat16 where the CPU does it natively; float32 / bfloat16 as asked (pure)."""
    return precision == "bfloat16" or (precision == "auto" and native_bfloat16(flags))


class Bfloat16Network:
    """A frozen bfloat16 line network behind pero-ocr's float32 interface: input cast to bfloat16 on the way
    in, logits back to float32 on the way out (pero-ocr's decoding and the stored logits stay as they were)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, batch: Any) -> Any:
        import torch
        return self.network(batch.to(torch.bfloat16)).float()


def _frozen(model: Any, bfloat16: bool) -> Any:
    """The network frozen for inference (a copy; `model` is left as it is), in bfloat16 when asked."""
    import torch
    if not bfloat16:
        return torch.jit.optimize_for_inference(torch.jit.freeze(model))
    saved = io.BytesIO()   # a copy through serialisation: deepcopy of a ScriptModule crashed when converted
    torch.jit.save(model, saved)
    saved.seek(0)
    converted = torch.jit.load(saved, map_location="cpu").eval()
    converted.to(torch.bfloat16)
    return Bfloat16Network(torch.jit.optimize_for_inference(torch.jit.freeze(converted)))


def optimize_for_cpu(page_parser: Any, bfloat16: bool = False) -> str:
    """Freeze the line-OCR network for inference on the CPU (batch norms folded into the convolutions,
    oneDNN layouts kept between layers; ~1.15x on fixed batches of the bundled model, within noise on whole
    pages), in bfloat16 when asked (the bundled model reads a page's lines 1.77x faster on a CPU with
    AVX512-BF16; README "OCR throughput").

    Only a TorchScript network of pero-ocr's CTC engine is touched, and only when the optimised network
    gives the same logits (within CHECK_TOLERANCE, BFLOAT16_CHECK_TOLERANCE for bfloat16) on a check input;
    otherwise the original stays and one warning says why.  Returns the precision of the network now in
    place ('float32' or 'bfloat16'), or '' when it was left as it was.
    """
    engine = getattr(getattr(page_parser, "ocr", None), "ocr_engine", None)
    model = getattr(engine, "model", None)
    if model is None or getattr(engine, "embed_id", None) is not None or getattr(engine, "model_type", "") != "ctc":
        return ""
    import torch
    if not isinstance(model, torch.jit.ScriptModule):
        return ""
    precision = "bfloat16" if bfloat16 else "float32"
    tolerance = BFLOAT16_CHECK_TOLERANCE if bfloat16 else CHECK_TOLERANCE
    try:
        model.eval()
        optimized = _frozen(model, bfloat16)
        sample = torch.rand(CHECK_INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            difference = float((optimized(sample) - model(sample)).abs().max())
    except Exception as error:  # an architecture the freezer cannot handle: run it as it is
        log.warning("the OCR network runs unoptimised: freezing it in %s failed (%s: %s)", precision,
                    type(error).__name__, error)
        return ""
    if not difference <= tolerance:
        log.warning("the OCR network runs unoptimised: the frozen %s network's logits differ by %.3g", precision,
                    difference)
        return ""
    engine.model = optimized
    return precision


def build(config: configparser.ConfigParser, model_dir: Path | None, *, device: str = "auto") -> PeroOcrProcessor:
    """A PeroOcrProcessor for the stage; StageConfigError when the config or model cannot be used."""
    if not config.has_section("PAGE_PARSER"):
        raise StageConfigError("stage config has no [PAGE_PARSER] section: it is not a pero-ocr config "
                               "(test processors need a [WORKER] section)")
    from pero_worker.worker.processors.character_prior import prior_settings
    try:
        prior = prior_settings(config)
    except ValueError as error:
        raise StageConfigError(str(error)) from None
    precision = cpu_precision(config)
    problems = check_model_paths(config, model_dir is not None)
    if not problems and model_dir is not None:
        problems = check_model_files(config, Path(model_dir))
    if problems:
        raise StageConfigError("; ".join(problems))
    try:
        import torch
        from pero_ocr.document_ocr.page_parser import PageParser
    except ImportError as error:
        raise StageConfigError(f"pero-ocr (or torch) is not installed in this environment: {error}") from None
    device_name = resolve_device(device, torch.cuda.is_available(), torch.cuda.device_count())
    torch_device = torch.device(device_name)
    try:
        parser = PageParser(config, device=torch_device, config_path=str(model_dir) if model_dir else "")
    except KeyError as error:
        raise StageConfigError(f"pero-ocr config lacks section or key {error}") from None
    except FileNotFoundError as error:
        shown = error.filename
        if model_dir is not None and shown:
            try:
                shown = str(Path(shown).resolve().relative_to(Path(model_dir).resolve()))
            except ValueError:
                pass
        raise StageConfigError(f"file {shown!r} not found in the stage's model folder") from None
    except Exception as error:
        raise StageConfigError(f"cannot load the pero-ocr stage: {type(error).__name__}: {error}") from error
    model_bytes = network_bytes(parser)
    frozen = ""
    if torch_device.type == "cpu":
        frozen = optimize_for_cpu(parser, use_bfloat16(precision, cpu_flags()))
    log.info("pero-ocr PageParser ready on %s (model folder %s%s)", device_name, model_dir,
             f", network frozen for the CPU in {frozen}" if frozen else "")
    processor = PeroOcrProcessor(parser, torch_device, _batching(config, parser, torch_device, model_dir), prior)
    processor.model_bytes = model_bytes
    return processor


def _batching(config: configparser.ConfigParser, parser: Any, device: Any, model_dir: Path | None) -> Any:
    """The batching parts (ocr_batched.Batching) for a stage that asks for it (BATCH_PAGES > 1), else None."""
    from pero_worker.worker.processors import ocr_batched, ocr_finishing
    settings = ocr_batched.batch_settings(config)
    if not settings.enabled:
        return None
    reason = ocr_batched.supports_batching(parser)
    if reason:
        log.warning("BATCH_PAGES = %d ignored: %s; pages are read one at a time", settings.pages, reason)
        return None
    on_cuda = device.type == "cuda"
    pixels = settings.max_pixels or (ocr_batched.DEFAULT_GPU_PIXELS if on_cuda else ocr_batched.DEFAULT_CPU_PIXELS)
    processes = settings.crop_processes
    if processes is None:
        processes = ocr_batched.default_crop_processes(device.type, ocr_batched.cores())
    threads = settings.page_threads
    if threads is None:
        threads = ocr_batched.default_page_threads(device.type, ocr_batched.cores())
    finishers = settings.finish_processes
    if finishers is None:
        finishers = ocr_finishing.default_finish_processes(device.type, ocr_batched.cores())
    reader = ocr_batched.BatchedLineReader(parser.ocr.ocr_engine, pixels, settings.max_padding,
                                           settings.mixed_precision)
    pool = ocr_batched.CropPool(processes) if processes > 0 else None
    finish_pool = None
    if threads > 1:
        log.info("cross-page batching: %d pages per step, read %d at a time (one torch thread each), %d px per "
                 "network batch, %d crop processes", settings.pages, threads, pixels, processes)
    else:
        if finishers > 0:
            text = io.StringIO()
            config.write(text)
            finish_pool = ocr_finishing.FinishPool(finishers, text.getvalue(), model_dir)
        log.info("cross-page batching: %d pages per step, %d px per network batch, padding <= %s, %d crop "
                 "processes, %d finishing processes%s", settings.pages, pixels, settings.max_padding, processes,
                 finishers, ", float16 autocast" if reader.mixed_precision else "")
    return ocr_batched.Batching(settings.pages, reader, pool, threads, finish_pool)


__all__ = ["build", "PeroOcrProcessor", "resolve_device", "optimize_for_cpu", "network_bytes", "cpu_precision",
           "use_bfloat16", "native_bfloat16", "cpu_flags", "Bfloat16Network",
           "check_model_paths", "check_engine_json",
           "check_model_files", "pick_result", "image_stem",
           "load_logits_dict", "apply_logits"]
