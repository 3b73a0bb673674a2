/* Pure AVX2 read bandwidth per thread: gcc -O2 -mavx2 -fopenmp read_bandwidth.c -o bw && OMP_NUM_THREADS=2 ./bw KB_PER_THREAD REPEATS */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <omp.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  size_t kb=atoi(argv[1]); int reps=atoi(argv[2]);
  size_t n=kb*1024/4;
  double best=1e9; float sink=0;
  #pragma omp parallel reduction(+:sink)
  {
    float*a=aligned_alloc(64,n*4); for(size_t i=0;i<n;i++)a[i]=1e-3f*(i%7);
    for(int trial=0;trial<7;trial++){
      #pragma omp barrier
      double t0=now();
      __m256 s0=_mm256_setzero_ps(),s1=s0,s2=s0,s3=s0,s4=s0,s5=s0,s6=s0,s7=s0;
      for(int r=0;r<reps;r++) for(size_t i=0;i<n;i+=64){
        s0=_mm256_add_ps(s0,_mm256_load_ps(a+i));s1=_mm256_add_ps(s1,_mm256_load_ps(a+i+8));
        s2=_mm256_add_ps(s2,_mm256_load_ps(a+i+16));s3=_mm256_add_ps(s3,_mm256_load_ps(a+i+24));
        s4=_mm256_add_ps(s4,_mm256_load_ps(a+i+32));s5=_mm256_add_ps(s5,_mm256_load_ps(a+i+40));
        s6=_mm256_add_ps(s6,_mm256_load_ps(a+i+48));s7=_mm256_add_ps(s7,_mm256_load_ps(a+i+56));}
      #pragma omp barrier
      double dt=now()-t0;
      #pragma omp master
      { if(dt<best)best=dt; }
      __m256 s=_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0,s1),_mm256_add_ps(s2,s3)),_mm256_add_ps(_mm256_add_ps(s4,s5),_mm256_add_ps(s6,s7)));
      float o[8];_mm256_storeu_ps(o,s);sink+=o[0];
    }
  }
  int nt=omp_get_max_threads();
  printf("%zu KB/thread x %d threads: %.1f GB/s (sink %g)\n",kb,nt,(double)kb*1024*reps*nt/best/1e9,sink);
}
