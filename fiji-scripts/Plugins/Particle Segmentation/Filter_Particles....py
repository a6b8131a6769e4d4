#@ ImagePlus imp
#@ ImagePlus (label="Intensity image", description="gray image for the intensity filter and columns, and for the overlay", required=false) intensity
#@ Integer (label="Min size (px)", description="remove particles of fewer pixels (noise)", value=0, min=0) min_size
#@ Boolean (label="Exclude border particles", description="reject particles touching the image border or the data bar", value=true) exclude_border
#@ String (label="Intensity filter", description="reject particles whose mean gray value is on the background side of this global threshold", choices={"none","li","otsu","mean","median"}, value="none") intensity_filter
#@ String (label="Polarity", description="particles brighter (SEM) or darker (TEM bright field) than the background; auto: estimated per image", choices={"auto","bright","dark"}, value="auto") polarity
#@ String (label="Area (calibrated unit²)", description="keep particles whose area is in MIN-MAX", value="0-Infinity") area
#@ String (label="ECD (calibrated unit)", description="keep particles whose equivalent circular diameter is in MIN-MAX", value="0-Infinity") ecd
#@ String (label="Feret min (calibrated unit)", description="keep particles whose minimum Feret diameter is in MIN-MAX", value="0-Infinity") feret_min
#@ String (label="Feret max (calibrated unit)", description="keep particles whose maximum Feret diameter is in MIN-MAX", value="0-Infinity") feret_max
#@ String (label="Circularity", description="keep particles whose circularity (4 pi area / perimeter², 0-1) is in MIN-MAX", value="0-1") circularity
#@ String (label="Solidity", description="keep particles whose solidity (area / convex area, 0-1) is in MIN-MAX", value="0-1") solidity
#@ String (label="Aspect ratio", description="keep particles whose aspect ratio (major / minor axis) is in MIN-MAX", value="0-Infinity") aspect_ratio
#@ Boolean (label="Clear results", description="reset the Results table (and ROI Manager) first", value=true) clear
#@ Boolean (label="Add to ROI Manager", value=true) add
#@ Boolean (label="Overlay on image", description="kept particles green, rejected red", value=true) overlay
#@ Boolean (label="Histogram plot", value=false) histogram
#@ String (label="Histogram of", choices={"feret_min","feret_max","ecd","area"}, value="feret_min") histogram_of

# Filter Particles... - particleseg, for Fiji's Python mode (Edit > Options > Python...).
# Reject particles of the active mask or label image by size, shape, border contact and intensity.
# Generated from particleseg.fiji.options by particleseg.fiji.scripting; do not edit by hand.
# Parameter names are the macro keys: run("Filter Particles...", "key=value ...").
try:
    from particleseg.fiji.scripting import run
except ImportError:  # Jython, or a Python without particleseg
    from ij import IJ
    IJ.error("Particle Segmentation", "Filter Particles... needs Fiji's Python mode with particleseg installed:\n"
             "Edit > Options > Python..., conda/pip dependencies from particleseg's environment.yml,\n"
             "'Launch in Python mode', restart Fiji. See docs/fiji.md.")
else:
    run('Filter Particles...', imp=imp, intensity=intensity, min_size=min_size, exclude_border=exclude_border, intensity_filter=intensity_filter, polarity=polarity, area=area, ecd=ecd, feret_min=feret_min, feret_max=feret_max, circularity=circularity, solidity=solidity, aspect_ratio=aspect_ratio, clear=clear, add=add, overlay=overlay, histogram=histogram, histogram_of=histogram_of)
