// Segment Folder: segment every image of a folder with Segment Particles... and save, per
// image, the particle table (CSV), the label image (TIFF) and the ROI set (ZIP).
//
// Headless, thousands of images (one ImageJ, one model load):
//   particleseg fiji run-macro Segment_Folder.ijm input=/data/sem output=/data/out model=default
// From the menu (Plugins > Particle Segmentation > Examples > Segment Folder) it asks for the folders.
//
// Arguments (key=value): input, output, and any parameter of Segment Particles... (model,
// threshold, seed_level, min_size, crop_rows, ...; see docs/fiji.md). A parameter left out takes
// the model bundle's default, as on the command line.

args = getArgument();
input = call("ij.Macro.getValue", args, "input", "");
output = call("ij.Macro.getValue", args, "output", "");
if (input == "") input = getDirectory("Choose the folder of SEM images");
if (output == "") output = getDirectory("Choose the output folder");
if (!endsWith(input, File.separator)) input = input + File.separator;
if (!endsWith(output, File.separator)) output = output + File.separator;
File.makeDirectory(output);

// the outputs this macro saves; the segmentation parameters are the arguments
parameters = replace(" " + args, "\\s(input|output)=(\\[[^\\]]*\\]|\\S*)", "");
options = "labels clear add probability=false mask=false overlay=false histogram=false" + parameters;

setBatchMode(true);
list = getFileList(input);
images = newArray(0);
for (i = 0; i < list.length; i++) {
    name = toLowerCase(list[i]);
    if (endsWith(name, ".tif") || endsWith(name, ".tiff") || endsWith(name, ".png") || endsWith(name, ".jpg"))
        images = Array.concat(images, list[i]);
}
total = 0;
for (i = 0; i < images.length; i++) {
    showProgress(i, images.length);
    open(input + images[i]);
    title = getTitle();
    dot = lastIndexOf(title, ".");
    stem = title;
    if (dot > 0) stem = substring(title, 0, dot);
    run("Segment Particles...", options);
    count = nResults;
    total = total + count;
    if (count > 0) saveAs("Results", output + stem + "_particles.csv");
    else File.saveString("", output + stem + "_particles.csv");  // no particles: an empty table
    if (roiManager("count") > 0) roiManager("save", output + stem + "_rois.zip");
    selectImage(stem + "_labels");
    saveAs("Tiff", output + stem + "_labels.tif");
    close("*");
    print("[" + (i + 1) + "/" + images.length + "] " + title + ": " + count + " particles");
}
print("Segment Folder: " + images.length + " images, " + total + " particles; results in " + output);
return "" + images.length + " " + total;
