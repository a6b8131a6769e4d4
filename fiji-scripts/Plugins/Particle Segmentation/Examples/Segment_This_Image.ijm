// Segment This Image: segment the active image and save its particle table, label image and
// ROI set. Made for per-image batch runs, where particleseg opens each image of a folder:
//   particleseg fiji run-macro Segment_This_Image.ijm --input /data/sem --output /data/out model=default
// From the menu it works on the active image and asks for the output folder.
//
// Arguments (key=value): output, and any parameter of Segment Particles... (model, threshold,
// seed_level, min_size, crop_rows, ...; see docs/fiji.md); input and name are set by run-macro.
// A parameter left out takes the model bundle's default, as on the command line.

args = getArgument();
output = call("ij.Macro.getValue", args, "output", "");
if (output == "") output = getDirectory("Choose the output folder");
if (!endsWith(output, File.separator)) output = output + File.separator;
parameters = replace(" " + args, "\\s(input|output|name)=(\\[[^\\]]*\\]|\\S*)", "");

title = getTitle();
dot = lastIndexOf(title, ".");
stem = title;
if (dot > 0) stem = substring(title, 0, dot);
run("Segment Particles...", "labels clear add probability=false mask=false overlay=false histogram=false" + parameters);
count = nResults;
if (count > 0) saveAs("Results", output + stem + "_particles.csv");
else File.saveString("", output + stem + "_particles.csv");  // no particles: an empty table
if (roiManager("count") > 0) roiManager("save", output + stem + "_rois.zip");
selectImage(stem + "_labels");
saveAs("Tiff", output + stem + "_labels.tif");
return "" + count;
