"""``factory publish``: an export folder uploaded to the Hugging Face hub as a model repository, its model card
(``README.md``) included. What would be uploaded is decided and checked before any network use: the folder holds
the factory's files, the card parses as the hub parses it (front matter with a licence and a ``model-index``), and
the report loads; then the hub must answer within seconds, else one line says so."""

from __future__ import annotations

import re
from pathlib import Path

from factory.errors import HubUnreachableError, OutputError
from factory.files import factory_files

CHANGES_NO_RESULT = True

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
def upload_plan(export_dir: Path) -> list[str]:
    """The files of ``export_dir`` to upload, after checking that it is a factory export with a valid card.
    OutputError naming the folder or file otherwise."""
    from huggingface_hub import ModelCard

    from factory.report.schema import Report

    if not (export_dir / "report.json").is_file():
        raise OutputError(f"{export_dir}: not an export folder of factory build (no report.json); give the --out "
                          "folder of a build, e.g. exports/<name>")
    card_path = export_dir / "README.md"
    if not card_path.is_file():
        raise OutputError(f"{card_path}: no model card; rebuild with this factory version (it writes README.md)")
    import yaml

    try:
        Report.load(export_dir / "report.json")
        card = ModelCard.load(card_path)
    except (ValueError, yaml.YAMLError) as err:  # pydantic's ValidationError is a ValueError
        raise OutputError(f"{export_dir}: {card_path.name} or report.json does not parse "
                          f"({' '.join(str(err).split())[:160]}); rebuild to write them again") from None
    data = card.data
    if not data.license or not data.eval_results:
        raise OutputError(f"{card_path}: the card's front matter lacks a license or a model-index; rebuild to "
                          "write it again")
    files = factory_files(export_dir)  # what the build wrote: a file the user added stays local
    if not any(name.endswith(".onnx") for name in files):
        raise OutputError(f"{export_dir}: no student*.onnx to publish")
    return files


def publish_to_hub(export_dir: Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list[str]:
    """Upload :func:`upload_plan`'s files of ``export_dir`` to the model repository ``repo_id`` (created if
    missing); with ``dry_run``, only check and return them. Returns the files."""
    if not REPO_ID.match(repo_id):
        raise OutputError(f"--repo {repo_id!r}: not a hub repository id; give ORG/NAME, e.g. my-org/flowers12-int8")
    files = upload_plan(Path(export_dir))
    if dry_run:
        return files
    from factory.network import hub_host, hub_reachable

    if not hub_reachable():
        raise HubUnreachableError(f"the Hugging Face hub ({hub_host()}) cannot be reached (or HF_HUB_OFFLINE is "
                                  f"set); nothing was uploaded; run `factory publish {export_dir} --repo {repo_id}` "
                                  "where it can be")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, repo_type="model", allow_patterns=files,
                          commit_message="factory publish")
    except HfHubHTTPError as err:
        raise HubUnreachableError(f"uploading to {repo_id} failed: {str(err).splitlines()[0]}; log in with "
                                  "`hf auth login` (or set HF_TOKEN) with write access to it") from None
    return files
