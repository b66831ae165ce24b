"""The released ADNI scripts' quirks that change numbers, and the modalities ``prepare``
builds: plain data, so the command line can list them without importing pandas."""

from __future__ import annotations

#: Quirk name → (where in the released code, what it does). Default: reproduced.
QUIRKS = {
    "mean-fill": (
        "clinical_preprocess.py l. 56, biospecimen_preprocess.py l. 53: "
        "df_num.fillna(df_num.mean().iloc[0])",
        "the _mean files fill every numerical gap with the first column's mean; fixed: "
        "each column's own mean"),
    "unfilled-categoricals": (
        "clinical_preprocess.py l. 71 and 90, biospecimen_preprocess.py l. 68 and 87: "
        "if initial_filling != 'None'",
        "the unfilled files (clinical_merged.csv, biospecimen_merged.csv) still fill "
        "categorical and date gaps with the mode (None is never the string 'None'); fixed: "
        "those gaps stay empty"),
    "gap-makes-categorical": (
        "clinical_preprocess.py l. 33, biospecimen_preprocess.py l. 30: "
        "df[col].astype(str).str.contains(pattern)",
        "a text column of numbers (e.g. ABETA with '>1700') is tested for letters after "
        "astype(str), where a gap reads 'nan', so with any gap it is one-hot encoded as "
        "categories; fixed: only the values present are tested, so it stays numerical"),
    "rid-mapping": (
        "biospecimen_preprocess.py l. 142 and 152: Phase[-1] + '_' + str(RID)",
        "UPENNBIOMK rows find their PTID through the phase's last character and the RID "
        "among APOERES's rows, so a measurement from another phase than the genotyping is "
        "lost; fixed: by RID alone, from APOERES and DXSUM"),
    "allele-filter": (
        "genomic_preprocess.ipynb cell 3: df_filtered.to_csv(... '.bim')",
        "the A/C/G/T filter rewrites the .bim and not the .bed, so after the first dropped "
        "SNP every name is read with another SNP's genotypes; fixed: each kept SNP keeps "
        "its own"),
    "liftover-coordinates": (
        "genomic_preprocess.ipynb cell 4: '1': filtered_data[3], '2': filtered_data[3]",
        "each 1-based position is lifted as a 0-based BED start; fixed: position − 1 is "
        "lifted and 1 added back (differs only where a chain block starts or ends)"),
}
MODALITIES = ("image", "genomic", "clinical", "biospecimen")
