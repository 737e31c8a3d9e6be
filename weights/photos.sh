# The photographs the shipped models train on, by package (weights/DATA.md says why these and not the others):
# MATE's nature backgrounds are taken whole; these are the Plasma wallpapers and OpenCV examples that are photos.
# Sourced by weights/train.sh and weights/pack_photos.sh.
PLASMA_PHOTOS="BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am"
OPENCV_PHOTOS="data/aero1.jpg data/aero3.jpg data/aloeL.jpg data/apple.jpg data/board.jpg data/building.jpg
  data/chicky_512.png data/ela_original.jpg data/fruits.jpg data/graf1.png data/leuvenA.jpg data/orange.jpg
  data/squirrel_cls.jpg data/stuff.jpg data/sudoku.png text/scenetext01.jpg text/scenetext02.jpg text/scenetext03.jpg
  text/scenetext04.jpg text/scenetext05.jpg text/scenetext06.jpg text/scenetext_segmented_word01.jpg
  text/scenetext_segmented_word02.jpg text/scenetext_segmented_word03.jpg text/scenetext_segmented_word04.jpg
  text/scenetext_segmented_word05.jpg"
