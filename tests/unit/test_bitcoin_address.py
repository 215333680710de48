"""Known answers for pool.bitcoin.address.

Sources: BIP173 and BIP350 test vectors (checksum strings, valid segwit addresses with their
scriptPubKeys, invalid addresses with reasons) and Bitcoin Core
src/test/data/key_io_valid.json (address -> scriptPubKey per chain).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pool.bitcoin.address import (
    AddressError,
    Encoding,
    address_to_script,
    base58check_decode,
    base58check_encode,
    bech32_decode,
    bech32_encode,
    decode_segwit,
    encode_segwit,
    witness_script,
)
from pool.bitcoin.network import (
    MAINNET,
    REGTEST,
    SIGNET,
    TESTNET,
    TESTNET4,
    Network,
    network_for_chain,
)

# --- generic checksum vectors ---------------------------------------------------------

VALID_BECH32 = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11" + "l" * 83 + "udsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
INVALID_BECH32 = [
    "\x201nwldj5",  # HRP character out of range
    "\x7f1axkwrx",
    "\x801eym55h",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",  # no separator
    "1pzry9x0s0muk",  # empty HRP
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # too short checksum
    "de1lg7wt\xff",  # invalid character in checksum
    "A1G7SGD8",  # checksum calculated with uppercase HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
]
INVALID_BECH32M = [
    "\x201xj0phk",
    "\x7f1g6xzxy",
    "\x801vctc34",
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
    "qyrz8wqd2c9m",
    "1qyrz8wqd2c9m",
    "y1b0jsk6g",
    "lt1igcx5c0",
    "in1muywd",
    "mm1crxm3i",
    "au1s5cgom",
    "M1VUXWEZ",
    "16plkw9",
    "1p2gdwpf",
]


def test_long_vectors_are_90_characters() -> None:
    assert {len(VALID_BECH32[2]), len(VALID_BECH32[4]), len(VALID_BECH32M[4])} == {90}


@pytest.mark.parametrize("s", VALID_BECH32)
def test_valid_bech32(s: str) -> None:
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32
    assert bech32_encode(hrp, data, Encoding.BECH32) == s.lower()


@pytest.mark.parametrize("s", VALID_BECH32M)
def test_valid_bech32m(s: str) -> None:
    hrp, data, encoding = bech32_decode(s)
    assert encoding is Encoding.BECH32M
    assert bech32_encode(hrp, data, Encoding.BECH32M) == s.lower()


@pytest.mark.parametrize("s", INVALID_BECH32 + INVALID_BECH32M)
def test_invalid_checksum_strings(s: str) -> None:
    with pytest.raises(AddressError):
        bech32_decode(s)


# --- segwit addresses -------------------------------------------------------------------

VALID_SEGWIT = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]

# BIP350 invalid list, plus BIP173's v1+ bech32 addresses (valid under BIP173 only).
INVALID_SEGWIT = [
    ("bc", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32m"),
    ("tb", "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "bech32m"),
    ("bc", "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bech32m"),
    ("bc", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "must use bech32"),
    ("tb", "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "must use bech32"),
    ("bc", "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "character"),
    ("bc", "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "version"),
    ("bc", "bc1pw5dgrnzv", "1 bytes"),
    (
        "bc",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
        "41 bytes",
    ),
    ("bc", "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "20 or 32"),
    ("tb", "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixed"),
    ("bc", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "padding"),
    ("tb", "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "padding"),
    ("bc", "bc1gmk9yu", "empty data"),
    ("bc", "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx", "bech32m"),
    ("bc", "BC1SW50QA3JX3S", "bech32m"),
    ("bc", "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj", "bech32m"),
    ("bc", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "checksum"),
    ("bc", "BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "version"),
    ("bc", "bc1rw5uspcuh", "1 bytes"),
    (
        "bc",
        "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
        "41 bytes",
    ),
    ("tb", "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixed"),
    ("bc", "bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "padding"),
    ("tb", "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv", "padding"),
]


@pytest.mark.parametrize(("address", "script"), VALID_SEGWIT)
def test_valid_segwit(address: str, script: str) -> None:
    hrp = address[:2].lower()
    version, program = decode_segwit(hrp, address)
    assert witness_script(version, program).hex() == script
    assert encode_segwit(hrp, version, program) == address.lower()
    network = MAINNET if hrp == "bc" else TESTNET
    assert address_to_script(address, network).hex() == script


@pytest.mark.parametrize(("hrp", "address", "reason"), INVALID_SEGWIT)
def test_invalid_segwit(hrp: str, address: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        decode_segwit(hrp, address)
    network = MAINNET if hrp == "bc" else TESTNET
    with pytest.raises(AddressError) as info:
        address_to_script(address, network)
    assert address in str(info.value)


@pytest.mark.parametrize(
    "address",
    [
        "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",
        "tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty",
    ],
)
def test_unknown_hrp(address: str) -> None:
    with pytest.raises(AddressError, match="human-readable part"):
        decode_segwit("bc", address)
    with pytest.raises(AddressError, match="unknown human-readable part 'tc'"):
        address_to_script(address, MAINNET)


def test_decode_segwit_wrong_hrp() -> None:
    with pytest.raises(AddressError, match="expected 'tb'"):
        decode_segwit("tb", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4")


@pytest.mark.parametrize(
    ("version", "program"), [(17, bytes(20)), (0, bytes(21)), (1, bytes(1)), (1, bytes(41))]
)
def test_encode_segwit_rejects(version: int, program: bytes) -> None:
    with pytest.raises(AddressError):
        encode_segwit("bc", version, program)
    with pytest.raises(ValueError):
        witness_script(version, program)


# --- Bitcoin Core key_io_valid.json --------------------------------------------------------

KEY_IO_VALID = [
    (
        "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo",
        "76a914a31c06bd463e3923bc1aadbde48b16976c08071788ac",
        "main",
    ),
    (
        "36j4NfKv6Akva9amjWrLG6MuSQym1GuEmm",
        "a914373b819a068f32b7a6b38b6b38729647cfde01c287",
        "main",
    ),
    (
        "mzK2FFDEhxqHcmrJw1ysqFkVyhUULo45hZ",
        "76a914ce28b26c57472737f5c3561a1761185bd8589a4388ac",
        "testnet4",
    ),
    (
        "2NC2hEhe28ULKAJkW5MjZ3jtTMJdvXmByvK",
        "a914ce0bba75891ff9ec60148d4bd4a09ee2dc5c933187",
        "testnet4",
    ),
    (
        "mww4LvqtTMKvmeQvizPz2EQv26xTneWrbg",
        "76a914b4110ba93ac54afc14da3bdd19614774a2d55d2988ac",
        "signet",
    ),
    (
        "2N1r7aC69VHeE7yQJPDLi9T1PYq4wnwvjuT",
        "a9145e5a35ab44b3efaea5129ba22b88ba3e2976614587",
        "signet",
    ),
    (
        "n4fajahJrAuKbN7uNsKjLjQkz9Qn5ewJXQ",
        "76a914fdeca3b08e38af53d7c4c60e3ad208ce5066441088ac",
        "regtest",
    ),
    (
        "2MxFajLApXpYk4VodBSZSt7rw8y4ryABkfA",
        "a91436e9f191e0b75036a77f65e2eaa4752443233fbe87",
        "regtest",
    ),
    (
        "1FjL87pn8ky6Vbavd1ZHeChRXtoxwRGCRd",
        "76a914a19331b7b2627e663e25a7b001e4c0dcc5e21bc788ac",
        "main",
    ),
    (
        "3BZECeAH8gSKkjrTx8PwMrNQBLG18yHpvf",
        "a9146c382dcdf5b284760c8e3fead91f7422cd76aa8787",
        "main",
    ),
    (
        "n4YNbYuFdPwFrxSP8sjHFbAhUbLMUiY9jE",
        "76a914fc8f9851f3c1e4719cd0b8e4816dd4e88c72e52888ac",
        "testnet4",
    ),
    (
        "2NAeQVZayzVFAtgeC3iYJsjpjWDmsDph71A",
        "a914bedc797342c03fd7a346c4c7857ca03d467013b687",
        "testnet4",
    ),
    (
        "mnCBpkNMJEJLehgdEkzSo2eioniyJMxLpZ",
        "76a914493c455551e48a1423263b62b127b436106a685488ac",
        "signet",
    ),
    (
        "2N5sNHomeNJDZv67AcFx9ES7FBZY4jx9KDA",
        "a9148a776a0f34d56b63e7c595f2b205dbe1c393617a87",
        "signet",
    ),
    (
        "mfhE6jAUwjUDNZhaX1PAsDTKfneQF2Nshc",
        "76a91401f15a4cc063dae4f4d56b89bfbc8bcc9ae5387c88ac",
        "regtest",
    ),
    (
        "2MxNm1VHyVU4RuP3u1c1v5aQLk2dQjwy1Qk",
        "a91438456f7c076356abadcc67b92ad777eb20fb9f8887",
        "regtest",
    ),
    (
        "bc1qvyq0cc6rahyvsazfdje0twl7ez82ndmuac2lhv",
        "00146100fc6343edc8c874496cb2f5bbfec88ea9b77c",
        "main",
    ),
    (
        "bc1qyucykdlhp62tezs0hagqury402qwhk589q80tqs5myh3rxq34nwqhkdhv7",
        "002027304b37f70e94bc8a0fbf500e0c957a80ebda87280ef58214d92f119811acdc",
        "main",
    ),
    (
        "bc1p83n3au0rjylefxq2nc2xh2y4jzz4pm6zxj4mw5pagdjjr2a9f36s6jjnnu",
        "51203c671ef1e3913f94980a9e146ba895908550ef4234abb7503d436521aba54c75",
        "main",
    ),
    ("bc1z2rksukkjr8", "520250ed", "main"),
    (
        "tb1qcrh3yqn4nlleplcez2yndq2ry8h9ncg3qh7n54",
        "0014c0ef1202759fff90ff19128936814321ee59e111",
        "testnet4",
    ),
    (
        "tb1quyl9ujpgwr2chdzdnnalen48sup245vdfnh2jxhsuq3yx80rrwlq5hqfe4",
        "0020e13e5e482870d58bb44d9cfbfccea78702aad18d4ceea91af0e022431de31bbe",
        "testnet4",
    ),
    (
        "tb1p35n52jy6xkm4wd905tdy8qtagrn73kqdz73xe4zxpvq9t3fp50aqk3s6gz",
        "51208d2745489a35b75734afa2da43817d40e7e8d80d17a26cd4460b0055c521a3fa",
        "testnet4",
    ),
    ("tb1rgv5m6uvdk3kc7qsuz0c79v88ycr5w4wa", "53104329bd718db46d8f021c13f1e2b0e726", "testnet4"),
    (
        "tb1q3vya2h5435jkugq2few7dmktlrwq4ejmfaw7kr",
        "00148b09d55e958d256e200a4e5de6eecbf8dc0ae65b",
        "signet",
    ),
    (
        "tb1qxkhrl2s6ttrclckldruea0e8anhrehffl8xv7t0pdyrzm08v2hyqy408nf",
        "002035ae3faa1a5ac78fe2df68f99ebf27ecee3cdd29f9cccf2de169062dbcec55c8",
        "signet",
    ),
    (
        "tb1pae5um27ahn8n73pgexe3kcwlp8dhswpn684h2k2w6t9a7w3eq65qephd5y",
        "5120ee69cdabddbccf3f4428c9b31b61df09db783833d1eb75594ed2cbdf3a3906a8",
        "signet",
    ),
    (
        "tb1rx9n9g37az8mu236e5jpxdt0m67y4fuq8rhs0ss3djnm0kscfrwvq0ntlyg",
        "532031665447dd11f7c54759a48266adfbd78954f0071de0f8422d94f6fb43091b98",
        "signet",
    ),
    (
        "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9",
        "00146f58bac9506f9bfb821d62e69330410bb56f0085",
        "regtest",
    ),
    (
        "bcrt1qan8gntac7z7me2ejt4hpru42ad2f759fmy0m3ejvs98656znv7eqga4uhv",
        "0020ecce89afb8f0bdbcab325d6e11f2aaeb549f50a9d91fb8e64c814faa685367b2",
        "regtest",
    ),
    (
        "bcrt1pfwxjqvtt4tcxrtdluukfmy2dv7xd2qzdfy6kajv5nwn4yam3wxkq3553uh",
        "51204b8d20316baaf061adbfe72c9d914d678cd5004d49356ec9949ba752777171ac",
        "regtest",
    ),
    (
        "bcrt1sx6p8njlx7h9mc2agz4yg82dzne23050ncq72cneeecez2pst8mahn8xecsf8g6hzx94420",
        "6028368279cbe6f5cbbc2ba8154883a9a29e5517d1f3c03cac4f39ce3225060b3efb799cd9c412746ae2",
        "regtest",
    ),
    ("bc1zmjtqxkzs89", "5202dc96", "main"),
    ("tb1r0ecpfxg2udhtc556gqrpwwhk4sw3f0kc", "53107e7014990ae36ebc529a4006173af6ac", "testnet4"),
    (
        "bcrt1q65nhlm4hf2ptg3t264al57p7wjxj2c3s6kyt83",
        "0014d5277feeb74a82b4456ad57bfa783e748d256230",
        "regtest",
    ),
    (
        "bcrt1s489d9fhmyel0vzfqsrmew4x7r80asuqesm5hgqacy35daflcyufh3j8cgdtflvt99ph05m",
        "6028a9cad2a6fb267ef6092080f79754de19dfd8701986e97403b82468dea7f8271378c8f843569fb165",
        "regtest",
    ),
]


@pytest.mark.parametrize(("address", "script", "chain"), KEY_IO_VALID)
def test_core_key_io_valid(address: str, script: str, chain: str) -> None:
    network = network_for_chain(chain)
    assert address_to_script(address, network).hex() == script
    if address[0] not in "123mn":  # bech32: case-insensitive (Core's tryCaseFlip)
        assert address_to_script(address.upper(), network).hex() == script


@pytest.mark.parametrize(("address", "script", "chain"), KEY_IO_VALID)
def test_base58check_encode_matches_core(address: str, script: str, chain: str) -> None:
    if address[0] not in "123mn":
        return
    network = network_for_chain(chain)
    raw = bytes.fromhex(script)
    if raw[0] == 0x76:
        payload = bytes([network.p2pkh_prefix]) + raw[3:23]
    else:
        payload = bytes([network.p2sh_prefix]) + raw[2:22]
    assert base58check_encode(payload) == address
    assert base58check_decode(address) == payload


@pytest.mark.parametrize("network", [TESTNET, TESTNET4, SIGNET], ids=lambda n: n.name)
def test_tb_and_testnet_base58_shared_by_test_networks(network: Network) -> None:
    for address, script, chain in KEY_IO_VALID:
        if chain in ("testnet4", "signet"):
            assert address_to_script(address, network).hex() == script


def test_regtest_accepts_testnet_base58_but_not_tb() -> None:
    assert address_to_script("mzK2FFDEhxqHcmrJw1ysqFkVyhUULo45hZ", REGTEST).hex() == (
        "76a914ce28b26c57472737f5c3561a1761185bd8589a4388ac"
    )
    with pytest.raises(AddressError) as info:
        address_to_script("tb1qcrh3yqn4nlleplcez2yndq2ry8h9ncg3qh7n54", REGTEST)
    message = str(info.value)
    assert "tb1qcrh3yqn4nlleplcez2yndq2ry8h9ncg3qh7n54" in message
    assert "test, testnet4 or signet" in message
    assert "regtest" in message


@pytest.mark.parametrize(
    ("address", "network", "owner"),
    [
        ("bc1qvyq0cc6rahyvsazfdje0twl7ez82ndmuac2lhv", REGTEST, "main"),
        ("BC1QVYQ0CC6RAHYVSAZFDJE0TWL7EZ82NDMUAC2LHV", TESTNET, "main"),
        ("1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo", REGTEST, "main"),
        ("36j4NfKv6Akva9amjWrLG6MuSQym1GuEmm", SIGNET, "main"),
        ("bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9", MAINNET, "regtest"),
        ("tb1q3vya2h5435jkugq2few7dmktlrwq4ejmfaw7kr", MAINNET, "test, testnet4 or signet"),
        ("mzK2FFDEhxqHcmrJw1ysqFkVyhUULo45hZ", MAINNET, "test, testnet4, signet or regtest"),
        ("2MxFajLApXpYk4VodBSZSt7rw8y4ryABkfA", MAINNET, "test, testnet4, signet or regtest"),
    ],
)
def test_wrong_network_names_both(address: str, network: Network, owner: str) -> None:
    with pytest.raises(AddressError) as info:
        address_to_script(address, network)
    assert str(info.value) == f"address {address} is for {owner}, but bitcoind runs {network.name}"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mp", "checksum"),  # last character changed
        ("1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2m0", "character '0'"),  # 0 is not base58
        ("bc1qvyq0cc6rahyvsazfdje0twl7ez82ndmuac2lhw", "checksum"),
        ("bc1qvyq0cc6rahyvsazfdje0twl7ez82ndmuac2lhV", "mixed"),
        ("5HsL2nZuEebU5nM3RxNVQD9GcAnvNMahqQskf4fkqHe54zwd14e", "33 bytes"),  # a private key
        ("hello", "not bech32 and not base58check"),
    ],
)
def test_invalid_addresses_say_why(address: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason) as info:
        address_to_script(address, MAINNET)
    assert address.strip() in str(info.value)


def test_unknown_base58_version_byte() -> None:
    address = base58check_encode(bytes([0x30]) + bytes(20))  # a Litecoin-style prefix
    with pytest.raises(AddressError, match="version byte 0x30"):
        address_to_script(address, MAINNET)


def test_surrounding_whitespace_ignored() -> None:
    script = address_to_script(" bc1qvyq0cc6rahyvsazfdje0twl7ez82ndmuac2lhv\n", MAINNET)
    assert script.hex() == "00146100fc6343edc8c874496cb2f5bbfec88ea9b77c"


def test_address_error_is_value_error() -> None:
    assert issubclass(AddressError, ValueError)


@pytest.mark.parametrize("bad", ["", "1", "11", "111", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLz"])
def test_base58check_decode_rejects(bad: str) -> None:
    with pytest.raises(AddressError):
        base58check_decode(bad)


@given(st.binary(max_size=40))
def test_base58check_round_trip(payload: bytes) -> None:
    assert base58check_decode(base58check_encode(payload)) == payload


@given(
    st.sampled_from(["bc", "tb", "bcrt"]),
    st.integers(min_value=0, max_value=16),
    st.binary(min_size=2, max_size=40),
)
def test_segwit_round_trip(hrp: str, version: int, program: bytes) -> None:
    if version == 0:
        program = (program * 32)[: 20 if len(program) % 2 else 32]
    address = encode_segwit(hrp, version, program)
    assert decode_segwit(hrp, address) == (version, program)
    assert decode_segwit(hrp, address.upper()) == (version, program)
    network = {"bc": MAINNET, "tb": TESTNET, "bcrt": REGTEST}[hrp]
    assert address_to_script(address, network) == witness_script(version, program)


@given(st.lists(st.integers(min_value=0, max_value=31), max_size=60), st.sampled_from(Encoding))
def test_bech32_round_trip(data: list[int], encoding: Encoding) -> None:
    s = bech32_encode("test", data, encoding)
    assert bech32_decode(s) == ("test", data, encoding)


def test_canonical_address_is_lower_case_bech32_and_base58_as_is() -> None:
    from pool.bitcoin import MAINNET
    from pool.bitcoin.address import canonical_address

    bech = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    assert canonical_address(bech.upper(), MAINNET) == canonical_address(bech, MAINNET)
    assert canonical_address(bech.upper(), MAINNET)[0] == bech
    p2pkh = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
    assert canonical_address(p2pkh, MAINNET)[0] == p2pkh
