"""`medseg keys generate|secret`: make key material (signing key pairs, de-identification secrets)."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.state import console

EXAMPLES = """Examples:

  medseg keys generate --out keys/ --name reviewer

  medseg keys secret deid.key

A signing key pair signs audit exports and validation reports (`medseg report sign`, `medseg audit export`);
give the .pub file to whoever verifies. A secret keys de-identification (`medseg deid --key-file`): the same
secret gives the same pseudonyms, UIDs and date shifts. Keep private files offline and out of version control.
"""

keys_app = typer.Typer(
    name="keys",
    help="Make key material: Ed25519 signing key pairs and de-identification secrets.",
    no_args_is_help=True,
    epilog=EXAMPLES,
)


def register(app: typer.Typer) -> None:
    """Add the `keys` command group to the app."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("generate", epilog=EXAMPLES)
def generate(
    out: Path = typer.Option(..., "--out", help="Folder for NAME.key (private, mode 0600) and NAME.key.pub."),
    name: str = typer.Option("medseg", "--name", help="File name stem of the key pair."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing key pair."),
) -> None:
    """Create an Ed25519 signing key pair (encrypted when MEDSEG_AUDIT_KEY_PASSPHRASE is set)."""
    from medseg.keys import keypair_paths, make_key_folder, write_keypair

    make_key_folder(out)
    private, public = keypair_paths(out, name)
    write_keypair(private, public, overwrite)
    console.result(f"{private}: private key (keep offline, never commit); {public}: public key")


@keys_app.command("secret", epilog=EXAMPLES)
def secret(
    path: Path = typer.Argument(..., help="Where to write the secret (64 hex digits, mode 0600)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing secret (old pseudonyms are lost)."),
) -> None:
    """Create a random 32-byte secret for keyed de-identification."""
    from medseg.keys import write_secret

    write_secret(path, overwrite)
    console.result(f"{path}: secret key (keep offline, never commit; losing it breaks re-identification links)")
