"""Keys: a private key never shows, pickles or copies its material."""

import copy
import logging
import os
import pickle
import stat

import pytest

import nanami

# `echo 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=' | wg pubkey`
KNOWN_PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
KNOWN_PUBLIC = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="


def test_generate_keypair_returns_matching_halves():
    private, public = nanami.generate_keypair()
    assert isinstance(private, nanami.PrivateKey)
    assert isinstance(public, nanami.PublicKey)
    assert private.public_key == public
    other, _ = nanami.generate_keypair()
    assert other.expose_secret() != private.expose_secret()
    assert nanami.PrivateKey.generate().public_key != public


def test_private_key_never_prints_its_material(caplog):
    private, public = nanami.generate_keypair()
    secret = private.expose_secret()
    shown = [repr(private), str(private), f"{private}", f"{private!r}", "%s" % (private,), repr([private])]
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("key %s %r", private, private)
    shown.append(caplog.text)
    for text in shown:
        assert secret not in text
        assert str(public) in text
    assert repr(private) == f"PrivateKey(public_key='{public}')"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_private_key_refuses_pickling(protocol):
    private, _ = nanami.generate_keypair()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(private, protocol=protocol)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"nested": [private]}, protocol=protocol)


def test_private_key_refuses_copying():
    private, _ = nanami.generate_keypair()
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.copy(private)
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.deepcopy({"k": private})
    with pytest.raises(AttributeError):
        private.__dict__  # noqa: B018  (no instance dict to peek into)


def test_known_vector_and_explicit_secret():
    private = nanami.PrivateKey.from_base64(KNOWN_PRIVATE)
    assert str(private.public_key) == KNOWN_PUBLIC
    assert private.expose_secret() == KNOWN_PRIVATE


def test_write_key_file_is_0600(tmp_path):
    private = nanami.PrivateKey.from_base64(KNOWN_PRIVATE)
    path = tmp_path / "private.key"
    private.write_key_file(path)
    assert path.read_text() == KNOWN_PRIVATE + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # An existing, looser file is tightened and replaced.
    loose = tmp_path / "loose.key"
    loose.write_text("old contents that are longer than a key" * 3)
    os.chmod(loose, 0o644)
    private.write_key_file(str(loose))
    assert loose.read_text() == KNOWN_PRIVATE + "\n"
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600
    with pytest.raises(FileNotFoundError):
        private.write_key_file(tmp_path / "no-such-dir" / "k")


def test_public_key_forms():
    key = nanami.PublicKey(KNOWN_PUBLIC)
    assert str(key) == key.to_base64() == KNOWN_PUBLIC
    assert repr(key) == f"PublicKey('{KNOWN_PUBLIC}')"
    assert len(bytes(key)) == 32
    assert nanami.PublicKey.from_hex(key.to_hex()) == key
    assert len(key.to_hex()) == 64
    assert {key, nanami.PublicKey(KNOWN_PUBLIC)} == {key}


@pytest.mark.parametrize(
    "text, message",
    [
        ("not base64!", "base64"),
        ("AAAA", "3 bytes"),
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "low-order"),
    ],
)
def test_bad_public_keys_raise_invalid_key_error(text, message):
    with pytest.raises(nanami.InvalidKeyError, match=message) as info:
        nanami.PublicKey(text)
    assert isinstance(info.value, nanami.NanamiError)


def test_bad_private_key_and_hex():
    with pytest.raises(nanami.InvalidKeyError):
        nanami.PrivateKey.from_base64("short")
    with pytest.raises(nanami.InvalidKeyError, match="hexadecimal"):
        nanami.PublicKey.from_hex("zz")
