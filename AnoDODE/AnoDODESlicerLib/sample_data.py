"""The module's sample scan for Slicer's Sample Data module: a skull-stripped BraTS 2023 glioma FLAIR.

File: ``BraTS-GLI-00001-000-t2f.nii.gz`` (BraTS 2023 adult glioma, case 00001, T2-FLAIR; skull-stripped,
co-registered, 1 mm isotropic, 240 x 240 x 155). URL: the "TestingData" release of the SlicerMONAIAuto3DSeg
extension, which registers the same file with this SHA-256 in its own ``registerSampleData``. The SHA-256 was
also computed here from a copy of the same case (BrainLesion/tutorials, commit a2d3fffe) and matches.

No brain mask is registered: the scan is skull-stripped, so the engine's default mask (its non-background
region) is the brain. No lesion mask is public beside this file either; the self-test therefore checks a
lesion given by environment variables when present (see ``AnoDODETest``), else FLAIR hyperintensity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    category: str
    name: str
    uri: str
    fileName: str
    nodeName: str
    sha256: str

    def checksum(self) -> str:
        """The checksum in Sample Data's "ALGORITHM:hex" form."""
        return f"SHA256:{self.sha256}"


FLAIR_SAMPLE = Sample(
    category="AnoDODE",
    name="AnoDODE BraTS glioma FLAIR",
    uri="https://github.com/lassoan/SlicerMONAIAuto3DSeg/releases/download/TestingData/BraTS-GLI-00001-000-t2f.nii.gz",
    fileName="BraTS-GLI-00001-000-t2f.nii.gz",
    nodeName="BraTS-GLI-00001-000 FLAIR",
    sha256="82aed8546af5e6d8d94fd91c56227abdcf6120130390d1556c4342a208980604",
)


def register(sampleDataLogic, thumbnailPath: str, sample: Sample = FLAIR_SAMPLE) -> None:
    """Register ``sample`` with Slicer's ``SampleData.SampleDataLogic`` (passed in: this file imports no Slicer)."""
    sampleDataLogic.registerCustomSampleDataSource(
        category=sample.category,
        sampleName=sample.name,
        uris=[sample.uri],
        fileNames=[sample.fileName],
        nodeNames=[sample.nodeName],
        checksums=[sample.checksum()],
        thumbnailFileName=thumbnailPath,
    )
