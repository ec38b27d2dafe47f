"""Layout files: spellings, well names, role inference, wildcard expansion and every validation error."""

from __future__ import annotations

import polars as pl
import pytest

from nucleiscreen.engine.screen.layout import LAYOUT_COLUMNS, expand_layout, infer_role, negative_kind, read_layout
from nucleiscreen.errors import UserError


def write(tmp_path, text: str, name: str = "layout.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_csv_and_normalizes_wells(tmp_path):
    text = "plate,well,gene_symbol,role,entrez_id\nP1,A1,FBXO5,sample,25793\nP1,p24,OTP,negative,\n"
    path = write(tmp_path, text)
    layout = read_layout(path)
    assert layout.columns == list(LAYOUT_COLUMNS)
    assert layout["well"].to_list() == ["A01", "P24"]
    assert layout["row"].to_list() == ["A", "P"]
    assert layout["column"].to_list() == [1, 24]
    assert layout["role"].to_list() == ["sample", "negative"]
    assert layout["entrez_id"].to_list() == ["25793", None]
    # a control's name defaults to its gene symbol; samples have none
    assert layout["control_name"].to_list() == [None, "OTP"]


@pytest.mark.parametrize("header", [
    "Plate,Well,Gene Symbol,Role",
    "Plate_ID,WELL,GeneSymbol,Type",
    "plate id,Well Name,Gene,well_type",
    "PLATE,well_id,gene_symbol,ROLE",
    "Barcode,Well,Symbol,Content",
])
def test_column_spellings(tmp_path, header):
    layout = read_layout(write(tmp_path, f"{header}\nP1,B07,KIF11,positive\n"))
    assert layout.row(0, named=True) == {
        "plate": "P1", "well": "B07", "row": "B", "column": 7, "gene_symbol": "KIF11", "role": "positive",
        "control_name": "KIF11", "sirna_id": None, "entrez_id": None,
    }


def test_tsv_parquet_and_bom(tmp_path):
    tsv = write(tmp_path, "\ufeffPlate\tWell\tGene\n*\tC3\tmock\n", "layout.tsv")
    assert read_layout(tsv).select("plate", "well", "role").row(0) == ("*", "C03", "negative")
    txt = write(tmp_path, "Plate\tWell\tGene\nP2\tC3\tPLK1\n", "layout.txt")  # sniffed
    assert read_layout(txt)["role"].to_list() == ["positive"]
    pq = tmp_path / "layout.parquet"
    table = pl.DataFrame({"Plate": ["P1"], "Well": ["D4"], "Gene Symbol": ["TP53"], "Entrez": [7157]})
    table.write_parquet(pq)
    assert read_layout(pq).select("well", "role", "entrez_id").row(0) == ("D04", "sample", "7157")


def test_role_inferred_from_names(tmp_path):
    names = {"OTP": "negative", "OTP-NT pool": "negative", "non-targeting": "negative", "NT": "negative",
             "Mock": "negative", "untransfected": "negative", "PLK1": "positive", "kif11": "positive",
             "LIPA": "other", "empty": "empty", "": "empty", "TP53": "sample", "NTRK1": "sample"}
    rows = "".join(f"P1,A{i + 1},{name}\n" for i, name in enumerate(names))
    layout = read_layout(write(tmp_path, "plate,well,gene_symbol\n" + rows)).sort("column")
    assert dict(zip(names, layout["role"], strict=True)) == names


def test_negative_kinds():
    names = {"OTP": "nontargeting", "otp-nt pool": "nontargeting", "Non-Targeting": "nontargeting",
             "mock": "mock", "Mock 2": "mock", "untransfected": "untransfected", "Untreated": "untransfected",
             "PLK1": None, "TP53": None, None: None}
    got = pl.select(negative_kind(pl.Series(list(names), dtype=pl.String))).to_series().to_list()
    assert got == list(names.values())
    # every kind is a negative control when the role is inferred
    roles = pl.select(infer_role(pl.Series(["untreated", "Mock 2", "OTP"]))).to_series().to_list()
    assert roles == ["negative"] * 3


def test_blank_role_cell_inferred_and_control_name_used(tmp_path):
    text = ("plate,well,gene_symbol,role,control_name\n"
            "P1,A01,,,OTP\n"            # role from the control name
            "P1,A02,PLK1,,\n"           # role from the gene
            "P1,A03,PLK1,sample,\n"     # an explicit role wins
            "P1,A04,,NEG,mock\n")       # role spellings
    layout = read_layout(write(tmp_path, text))
    assert layout["role"].to_list() == ["negative", "positive", "sample", "negative"]
    assert layout["control_name"].to_list() == ["OTP", "PLK1", None, "mock"]


def test_blank_rows_skipped_and_numbered(tmp_path):
    # a spreadsheet export: a blank line, then trailing rows of empty cells
    text = "plate,well,gene_symbol,role\nP1,A01,X,sample\n\nP1,A02,Y,sample\n,,,\n , ,,\n"
    assert read_layout(write(tmp_path, text))["well"].to_list() == ["A01", "A02"]
    with pytest.raises(UserError, match=r"row 3 \(line 4\): well 'Q01' is outside"):
        read_layout(write(tmp_path, "plate,well,gene_symbol\nP1,A01,X\n,,\nP1,Q01,Y\n"))


HEADER = "plate,well,gene_symbol,role\n"


@pytest.mark.parametrize(("text", "expected"), [
    (HEADER + "P1,A01,X,sample\nP1,Q01,Y,sample\n", "row 2 (line 3): well 'Q01' is outside"),
    (HEADER + "P1,A25,Y,sample\n", "row 1 (line 2): well 'A25' is outside"),
    (HEADER + "P1,A00,Y,sample\n", "row 1 (line 2): well 'A00' is outside"),
    (HEADER + "P1,well7,Y,sample\n", "row 1 (line 2): well 'well7' is outside"),
    (HEADER + "P1,A01,X,sample\nP1,B01,Y,treatment\n", "row 2 (line 3): unknown role 'treatment'"),
    (HEADER + "P1,A01,X,sample\nP1,B1,Y,sample\nP1,B01,Z,sample\n",
     "row 3 (line 4): plate P1 well B01 is given twice (first in row 2)"),
    (HEADER + "P1,A01,X,sample\n,B01,Y,sample\n", "row 2 (line 3): no plate"),
    (HEADER + "P1,,X,sample\n", "row 1 (line 2): no well"),
    (HEADER + "P1,A01,,sample\n", "row 1 (line 2): a sample well without a gene symbol"),
])
def test_validation_errors_name_file_and_row(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        read_layout(path)
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_missing_columns_listed(tmp_path):
    path = write(tmp_path, "Plate,Position,Gene\nP1,A01,X\n")
    with pytest.raises(UserError, match=r"no column for well \(found: Plate, Position, Gene\)") as e:
        read_layout(path)
    assert str(path) in str(e.value)


def test_ambiguous_columns(tmp_path):
    with pytest.raises(UserError, match="'Gene', 'Gene Symbol' all name gene_symbol"):
        read_layout(write(tmp_path, "plate,well,Gene,Gene Symbol\nP1,A01,X,X\n"))


def test_missing_empty_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_layout(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="empty|cannot read"):
        read_layout(write(tmp_path, ""))
    bad = tmp_path / "layout.parquet"
    bad.write_bytes(b"not a parquet file at all")
    with pytest.raises(UserError, match=f"cannot read layout file {bad}"):
        read_layout(bad)
    with pytest.raises(UserError, match="cannot read layout file"):
        read_layout(write(tmp_path, 'plate,well,gene\nP1,A01,"unterminated\n'))


def test_wildcard_expansion_and_override(tmp_path):
    text = ("plate,well,gene_symbol,role\n"
            "*,A01,OTP,negative\n*,A02,PLK1,positive\n"
            "P1,A02,TP53,sample\nP1,B05,FBXO5,sample\n"   # P1 puts a sample where the wildcard puts PLK1
            "P2,C07,UBB,sample\nP3,D01,CCNA2,sample\n")
    layout = expand_layout(read_layout(write(tmp_path, text)), ["P1", "P2"])
    got = {(r["plate"], r["well"]): (r["gene_symbol"], r["role"]) for r in layout.iter_rows(named=True)}
    assert got == {
        ("P1", "A01"): ("OTP", "negative"), ("P1", "A02"): ("TP53", "sample"),
        ("P1", "B05"): ("FBXO5", "sample"),
        ("P2", "A01"): ("OTP", "negative"), ("P2", "A02"): ("PLK1", "positive"),
        ("P2", "C07"): ("UBB", "sample"),
    }
    assert layout.columns == list(LAYOUT_COLUMNS)
    # expanding twice changes nothing
    assert expand_layout(layout, ["P1", "P2"]).equals(layout)


def test_plates_missing_from_layout_are_named(tmp_path):
    layout = read_layout(write(tmp_path, "plate,well,gene_symbol\n*,A01,OTP\nP1,B01,TP53\n"))
    with pytest.raises(UserError, match=r"layout.csv: no rows for 2 plate\(s\) of the run: P7, P9"):
        expand_layout(layout, ["P1", "P9", "P7"], source=tmp_path / "layout.csv")
